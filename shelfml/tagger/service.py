"""What the served ``tagger`` model does, without Triton or torch: texts -> (path, brand, confidence)
with the checkpoint's tokenizer and taxonomy constraint, through any step factory."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.decoding import Prediction
from shelfml.labels import format_path
from shelfml.retrieval.embedder import served_embedder
from shelfml.serving import Leaf
from shelfml.tagger.predict import MakeStep, Tagger


class TaggerService:
    def __init__(self, assets: Path, make_step: MakeStep, max_batch: int = 64, embed: Leaf | None = None) -> None:
        """``embed``: the embedder leaf of a tagger trained with retrieval (its index is inside ``assets``;
        a checkpoint that needs an index and has none is refused at load)."""
        self.tagger = Tagger.load(Path(assets), weights=False, embedder=served_embedder(assets, embed))
        self.make_step, self.max_batch = make_step, max_batch

    def tag(self, texts: Sequence[str]) -> list[Prediction]:
        return self.tagger.predict(list(texts), batch_size=self.max_batch, make_step=self.make_step)

    @staticmethod
    def outputs(preds: Sequence[Prediction]) -> dict[str, np.ndarray]:
        return {"path": np.array([[format_path(p.label.path).encode()] for p in preds], dtype=object),
                "brand": np.array([[p.label.brand.encode()] for p in preds], dtype=object),
                "confidence": np.array([[p.confidence] for p in preds], dtype=np.float32)}
