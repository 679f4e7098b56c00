"""What the served ``tagger`` model does, without Triton or torch: texts -> path, brand, confidence, calibrated
per-level probabilities, back-off path, abstention and the top-k paths, with the checkpoint's tokenizer, taxonomy
constraint and calibration, through any step factory."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.checkpoint import read_manifest
from shelfml.confidence import decide, parse_thresholds
from shelfml.decoding import Prediction
from shelfml.labels import format_path
from shelfml.retrieval.embedder import served_embedder
from shelfml.serving import Leaf
from shelfml.tagger.predict import Tagger, check_top_k

SERVED_TOP_K = 1  # paths per product by default: the prediction alone; each extra path costs a decode of its branch


def served_parameters(assets: Path, thresholds: str | None = None, top_k: int | None = None) -> dict[str, str]:
    """The repository parameters of the served model for these options, checked against the export's taxonomy
    (ValueError naming the problem): ``thresholds`` "0.9,0.8,0.7" (one per level) replaces the calibrated ones."""
    params = {}
    if thresholds is not None:
        levels = read_manifest(Path(assets), task="tagger", weights=False)["taxonomy"]["levels"]
        params["thresholds"] = ",".join(f"{t:g}" for t in parse_thresholds(thresholds, levels))
    if top_k is not None:
        params["top_k"] = str(check_top_k(top_k))
    return params


class TaggerService:
    def __init__(self, assets: Path, make_step, max_batch: int = 64, embed: Leaf | None = None,
                 thresholds: str | None = None, top_k: int = SERVED_TOP_K) -> None:
        """``embed``: the embedder leaf of a tagger trained with retrieval (its index is inside ``assets``;
        a checkpoint that needs an index and has none is refused at load); ``thresholds``: per-level thresholds
        replacing the calibrated ones (refused unless one per level, each in 0..1)."""
        self.tagger = Tagger.load(Path(assets), weights=False, embedder=served_embedder(assets, embed))
        self.make_step, self.max_batch = make_step, max_batch
        levels = self.tagger.taxonomy.levels
        self.thresholds = parse_thresholds(thresholds, levels) if thresholds else None
        self.top_k = check_top_k(top_k)

    def tag(self, texts: Sequence[str]) -> list[Prediction]:
        return self.tagger.predict(list(texts), batch_size=self.max_batch, make_step=self.make_step, top_k=self.top_k)

    def outputs(self, preds: Sequence[Prediction]) -> dict[str, np.ndarray]:
        decision = decide(preds, self.tagger.taxonomy.levels, self.tagger.calibration, self.thresholds)
        alternatives = [list(p.alternatives) + [((), 0.0)] * (self.top_k - len(p.alternatives)) for p in preds]
        return {"path": np.array([[format_path(p.label.path).encode()] for p in preds], dtype=object),
                "brand": np.array([[p.label.brand.encode()] for p in preds], dtype=object),
                "confidence": np.array([[p.confidence] for p in preds], dtype=np.float32),
                "level_probability": decision.probabilities.astype(np.float32),
                "backoff_path": np.array([[format_path(p.label.path[:d]).encode()]
                                          for p, d in zip(preds, decision.backoff_depth)], dtype=object),
                "abstain": decision.abstain.reshape(-1, 1),
                "alternatives": np.array([[format_path(path).encode() for path, _ in row] for row in alternatives],
                                         dtype=object).reshape(len(preds), self.top_k),
                "alternative_probability": np.array([[prob for _, prob in row] for row in alternatives],
                                                    dtype=np.float32).reshape(len(preds), self.top_k)}
