"""The tagger's label prior: the labels of a product's lexical neighbours among the training rows
(:mod:`shelfml.lexical`) as a distribution over the taxonomy's paths and brands.

The one decode loop adds ``weight * log(prior mass)`` to the logits of every allowed token, the mass of a token
being the prior probability of all the paths (or brands) under that child of the trie; the weight is fitted on
validation at training time. The prior is part of the model: its index is stored in the checkpoint
(``lexical/``), exported with the assets and applied by eager, ONNX Runtime and served decoding alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.labels import Label, Taxonomy
from shelfml.lexical import LexicalIndex, softmax_weights

PRIOR_DIR = "lexical"  # inside a checkpoint and an export's assets


@dataclass
class PriorConfig:
    """How neighbours become a distribution (recorded in the checkpoint manifest)."""

    k: int = 20  # neighbours
    temperature: float = 0.05  # softmax temperature over cosine similarities
    smoothing: float = 0.02  # mass spread uniformly (no label is impossible under the prior)
    weight: float = 1.0  # the decode loop's weight of log(prior mass) while it decodes the path; fitted
    brand_weight: float = 1.0  # ... and while it decodes the brand; fitted

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PriorConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class PriorBatch:
    """Prior probabilities of one batch: over ``taxonomy.paths`` and over ``[""] + taxonomy.brands``."""

    paths: np.ndarray  # [rows, n_paths]
    brands: np.ndarray  # [rows, 1 + n_brands]
    weight: float  # on the path tokens
    brand_weight: float  # on the brand tokens


class LabelPrior:
    """Lexical neighbours -> :class:`PriorBatch`."""

    def __init__(self, index: LexicalIndex, taxonomy: Taxonomy, cfg: PriorConfig) -> None:
        self.index, self.taxonomy, self.cfg = index, taxonomy, cfg
        self.n_paths, self.n_brands = len(taxonomy.paths), 1 + len(taxonomy.brands)

    @classmethod
    def build(cls, texts: Sequence[str], labels: Sequence[Label], titles: Sequence[str], taxonomy: Taxonomy,
              cfg: PriorConfig | None = None) -> "LabelPrior":
        """Index the training rows (model inputs, gold labels, titles for the same-title exclusion)."""
        path_id = {p: i for i, p in enumerate(taxonomy.paths)}
        brand_id = {b: i + 1 for i, b in enumerate(taxonomy.brands)}
        ids = {"path": [path_id[lab.path] for lab in labels], "brand": [brand_id.get(lab.brand, 0) for lab in labels]}
        return cls(LexicalIndex.build(texts, ids, titles), taxonomy, cfg or PriorConfig())

    def batch(self, texts: Sequence[str], exclude_titles: Sequence[str] | None = None) -> PriorBatch:
        rows, scores = self.index.search(texts, self.cfg.k, exclude_titles)
        weights = softmax_weights(scores, self.cfg.temperature)
        found = rows >= 0
        out = []
        for name, size in (("path", self.n_paths), ("brand", self.n_brands)):
            probs = np.zeros((len(texts), size), dtype=np.float64)
            r, c = np.nonzero(found)
            np.add.at(probs, (r, self.index.labels[name][rows[r, c]]), weights[r, c])
            empty = probs.sum(axis=1) == 0  # no neighbour at all: uniform
            probs[empty] = 1.0 / size
            out.append((1 - self.cfg.smoothing) * probs + self.cfg.smoothing / size)
        return PriorBatch(out[0], out[1], self.cfg.weight, self.cfg.brand_weight)

    def describe(self) -> dict:
        return {**self.cfg.to_dict(), "index_rows": self.index.size, "fingerprint": self.index.fingerprint()}

    def save(self, folder: Path) -> dict:
        self.index.save(Path(folder) / PRIOR_DIR)
        return {**self.describe(), "path": PRIOR_DIR}

    @classmethod
    def load(cls, folder: Path, recorded: dict, taxonomy: Taxonomy) -> "LabelPrior":
        """The prior a checkpoint (or an export's assets) stores; refuses a changed index."""
        index = LexicalIndex.load(Path(folder) / recorded.get("path", PRIOR_DIR))
        if index.fingerprint() != recorded["fingerprint"]:
            raise ValueError(f"{Path(folder) / PRIOR_DIR}: index {index.fingerprint()} is not the one this model "
                             f"was trained with ({recorded['fingerprint']})")
        return cls(index, taxonomy, PriorConfig.from_dict(recorded))
