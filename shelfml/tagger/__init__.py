"""The T5 tagger family: everything particular to it, by role.

- :mod:`~shelfml.tagger.contract`: its graphs and served model as data
- :mod:`~shelfml.tagger.config`: the named T5 shapes, no torch
- :mod:`~shelfml.tagger.predict`: :class:`Tagger` (tokenizer + constraint + any backend), no torch
- :mod:`~shelfml.tagger.model`: the PyTorch T5 (shapes, loading, the eager step)
- :mod:`~shelfml.tagger.onnx`: the ONNX wrapper modules (encoder, KV-cache decoder step)
- :mod:`~shelfml.tagger.runners`: ONNX Runtime and BLS step factories, no torch
- :mod:`~shelfml.tagger.service`: what the served ``tagger`` model does, no torch
- :mod:`~shelfml.tagger.export`: the export stage's hooks
"""

import importlib

_LAZY = {'MAX_INPUT_TOKENS': 'predict', 'MakeStep': 'predict', 'Tagger': 'predict'}  # name -> submodule: importing a contract alone loads neither tokenizers nor pictures
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"shelfml.tagger.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shelfml.tagger' has no attribute {name!r}")
