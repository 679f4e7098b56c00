"""The price regressor family: everything particular to it, by role.

- :mod:`~shelfml.price.contract`: its graph and served model as data
- :mod:`~shelfml.price.config`: configuration, the price transform, file names; no torch
- :mod:`~shelfml.price.regressor`: :class:`PriceRegressor`, the ONE feeds builder, any backend; no torch
- :mod:`~shelfml.price.wide`: the wide branch (classifiers' path and brand, sizes and packs, n-grams -> ridge); no torch
- :mod:`~shelfml.price.model`: the PyTorch model (encoder + image branch + head), building and loading
- :mod:`~shelfml.price.onnx`: the ONNX wrapper module
- :mod:`~shelfml.price.runners`: the ONNX Runtime backend, no torch
- :mod:`~shelfml.price.service`: what the served ``price`` model does, no torch
- :mod:`~shelfml.price.export`: the export stage's hooks
- :mod:`~shelfml.price.hf`: its Hugging Face model card
"""

import importlib

_LAZY = {'ENCODER_DIR': 'config', 'LOSSES': 'config', 'MAX_LOG_PRICE': 'config', 'PriceConfig': 'config', 'default_encoder': 'config', 'from_log': 'config', 'resolve_pooling': 'config', 'to_log': 'config', 'PriceRegressor': 'regressor'}  # name -> submodule: importing a contract alone loads neither tokenizers nor pictures
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"shelfml.price.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shelfml.price' has no attribute {name!r}")
