"""The price model's ONNX graph: the eager model's own forward pass in its dense form (every row has a
picture slot; the mask zeroes rows without one), with the price transform at the end."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from shelfml.contract import GraphSpec
from shelfml.export.onnx import OPSET, eager_copy, export_graph
from shelfml.price.config import MAX_LOG_PRICE
from shelfml.price.contract import price_spec
from shelfml.price.model import PriceModel


class PriceGraph(nn.Module):
    """The contract's feeds -> price."""

    def __init__(self, model: PriceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *rest):
        """``rest``: pixel_values and image_mask (image branch), neighbour_features (neighbour feature),
        wide_features (wide branch), in that order."""
        m, rest = self.model, list(rest)
        pixel_values, image_mask = (rest.pop(0), rest.pop(0)) if m.cfg.images else (None, None)
        neighbours = rest.pop(0) if m.cfg.neighbours else None
        wide = rest.pop(0) if m.cfg.wide else None
        log_price = m(input_ids, attention_mask, pixel_values, image_mask, neighbours, dense=True,
                      wide_features=wide).log_price
        return (torch.exp(log_price.clamp(max=MAX_LOG_PRICE)) - 1).clamp(min=0)[:, None]  # ONNX has no Expm1


def export_price(model: PriceModel, out_dir: Path, opset: int = OPSET) -> dict[str, GraphSpec]:
    """model.onnx: the regressor from token ids (+ pictures) to price."""
    model = eager_copy(model)
    cfg = model.cfg
    spec = price_spec(cfg.images, cfg.image["size"] if cfg.images else None, bool(cfg.neighbours), cfg.wide)
    vocab = model.text_encoder.config.vocab_size
    ids = torch.randint(1000 if vocab > 2000 else 2, vocab, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    example: tuple = (ids, mask)
    if cfg.images:
        size = cfg.image["size"]
        example += (torch.randn(2, 3, size, size), torch.tensor([[True], [False]]))
    if cfg.neighbours:
        example += (torch.tensor([[6.5, 0.9], [float("nan"), 0.2]]),)
    if cfg.wide:
        example += (torch.tensor([[6.2], [0.4]]),)
    export_graph(PriceGraph(model).eval(), spec, example, out_dir / spec.file, opset)
    return {"model": spec}
