"""The retrieval query encoder as an ONNX graph (``embedder.onnx``): a sentence-transformers MiniLM,
mean pooling over the mask, L2 normalisation (as all-MiniLM-L6-v2 is used)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shelfml.contract import GraphSpec
from shelfml.export.onnx import OPSET, eager_copy, export_graph
from shelfml.retrieval.embedder import embedder_spec


class EmbedderGraph(nn.Module):
    """A sentence-transformers MiniLM: encoder, mean pooling over the mask, L2 normalisation."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def export_embedder(encoder_dir: Path, out_dir: Path, opset: int = OPSET) -> dict[str, GraphSpec]:
    """embedder.onnx: the retrieval encoder (mean pooling + normalisation, as all-MiniLM-L6-v2 is used)."""
    from transformers import AutoModel

    encoder = eager_copy(AutoModel.from_pretrained(encoder_dir, local_files_only=True))
    spec = embedder_spec(encoder.config.hidden_size)
    ids = torch.randint(1000, encoder.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    export_graph(EmbedderGraph(encoder).eval(), spec, (ids, mask), out_dir / spec.file, opset)
    return {"embedder": spec}
