"""PyTorch -> ONNX, the export stage's generic part: an exportable eval copy of a model, and one
graph exported under its contract's names and axes with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)``), then checked with ``onnx.checker``.

Each family's wrapper modules and graph list live with the family (``shelfml/<family>/onnx.py``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from shelfml.contract import GraphSpec

OPSET = 17


def eager_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy using the plain attention implementation (exportable, no SDPA fast paths)."""
    model = copy.deepcopy(model).eval().float()
    for module in model.modules():
        if hasattr(module, "set_attn_implementation") and getattr(module, "config", None) is not None:
            try:
                module.set_attn_implementation("eager")
            except (ValueError, AttributeError):
                pass
    return model


def export_graph(module: nn.Module, spec: GraphSpec, example: tuple[torch.Tensor, ...], out: Path,
                 opset: int = OPSET) -> Path:
    """Export ``module`` under ``spec``'s names/axes, then check the file with ``onnx.checker``."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python values; parity tests are the check
        torch.onnx.export(module, example, str(out), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes(), opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    onnx.checker.check_model(str(out), full_check=True)
    return out
