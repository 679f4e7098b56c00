"""The tagger's label prior over the taxonomy's paths and brands, from the product's text alone
(:mod:`shelfml.lexical`: hashed TF-IDF features): paths from a linear classifier (one-vs-rest LinearSVC, its
strongest weights kept), brands from the labels of the product's lexical neighbours among the training rows
(brands are often told by product-line words only one brand sells).

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
from shelfml.lexical import LexicalIndex, LinearScorer, array_digest, softmax_weights

PRIOR_DIR = "lexical"  # inside a checkpoint and an export's assets
LINEAR_FILE = "linear.safetensors"  # the path classifier, beside the lexical index
CACHE_ROWS = 20_000  # texts whose evidence is kept; the cache starts afresh beyond this


@dataclass
class PriorConfig:
    """How neighbours become a distribution (recorded in the checkpoint manifest)."""

    k: int = 20  # neighbours
    temperature: float = 0.05  # softmax temperature over the neighbours' cosine similarities (brands)
    path_temperature: float = 0.1  # softmax temperature over the linear classifier's decision values (paths)
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

    def __init__(self, index: LexicalIndex, taxonomy: Taxonomy, cfg: PriorConfig,
                 path_scorer: LinearScorer | None = None) -> None:
        self.index, self.taxonomy, self.cfg, self.path_scorer = index, taxonomy, cfg, path_scorer
        self.n_paths, self.n_brands = len(taxonomy.paths), 1 + len(taxonomy.brands)
        self._cache: dict[str, tuple] = {}
        self._cache_k = cfg.k

    @classmethod
    def build(cls, texts: Sequence[str], labels: Sequence[Label], titles: Sequence[str], taxonomy: Taxonomy,
              cfg: PriorConfig | None = None) -> "LabelPrior":
        """Index the training rows (model inputs, gold labels, titles for the same-title exclusion)."""
        path_id = {p: i for i, p in enumerate(taxonomy.paths)}
        brand_id = {b: i + 1 for i, b in enumerate(taxonomy.brands)}
        ids = {"path": [path_id[lab.path] for lab in labels], "brand": [brand_id.get(lab.brand, 0) for lab in labels]}
        index = LexicalIndex.build(texts, ids, titles)
        vectors = [index.featurizer.vector(t, index.idf) for t in texts]
        scorer = LinearScorer.fit(vectors, ids["path"], len(taxonomy.paths), index.featurizer.bits)
        return cls(index, taxonomy, cfg or PriorConfig(), scorer)

    def evidence(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(neighbour rows [n, k], their similarities [n, k], the path classifier's decision values [n, paths]
        or None) of each text: what the distributions are made of, independent of the temperatures. Cached per
        text (catalogs repeat titles; the validation search decodes the same rows at every grid point)."""
        if self._cache_k != self.cfg.k or len(self._cache) + len(texts) > CACHE_ROWS:
            self._cache, self._cache_k = {}, self.cfg.k
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            rows, scores = self.index.search(todo, self.cfg.k)
            for i, text in enumerate(todo):
                linear = None
                if self.path_scorer is not None:
                    linear = self.path_scorer.scores(*self.index.featurizer.vector(text, self.index.idf))
                self._cache[text] = (rows[i], scores[i], linear)
        found = [self._cache[t] for t in texts]
        linear = np.stack([f[2] for f in found]) if self.path_scorer is not None else None
        return np.stack([f[0] for f in found]), np.stack([f[1] for f in found]), linear

    def batch(self, texts: Sequence[str], exclude_titles: Sequence[str] | None = None) -> PriorBatch:
        """The prior of ``texts``; ``exclude_titles``: a training row's own normalised title is never its neighbour
        (uncached)."""
        if exclude_titles is None:
            rows, scores, linear = self.evidence(texts)
        else:
            rows, scores = self.index.search(texts, self.cfg.k, exclude_titles)
            linear = None if self.path_scorer is None else np.stack(
                [self.path_scorer.scores(*self.index.featurizer.vector(t, self.index.idf)) for t in texts])
        paths = self._neighbour_probs(rows, scores, "path", self.n_paths) if linear is None else _softmax(
            linear / max(self.cfg.path_temperature, 1e-6))
        brands = self._neighbour_probs(rows, scores, "brand", self.n_brands)
        smooth = self.cfg.smoothing
        return PriorBatch((1 - smooth) * paths + smooth / self.n_paths, (1 - smooth) * brands + smooth / self.n_brands,
                          self.cfg.weight, self.cfg.brand_weight)

    def _neighbour_probs(self, rows: np.ndarray, scores: np.ndarray, name: str, size: int) -> np.ndarray:
        """Similarity-softmax weights of the neighbours summed per label (uniform when a text has none)."""
        weights = softmax_weights(scores, self.cfg.temperature)
        probs = np.zeros((len(rows), size), dtype=np.float64)
        r, c = np.nonzero(rows >= 0)
        np.add.at(probs, (r, self.index.labels[name][rows[r, c]]), weights[r, c])
        probs[probs.sum(axis=1) == 0] = 1.0 / size
        return probs

    def describe(self) -> dict:
        scorer = self.path_scorer
        return {**self.cfg.to_dict(), "index_rows": self.index.size, "fingerprint": self.index.fingerprint(),
                "paths_from": "linear classifier" if scorer is not None else "neighbours", "brands_from": "neighbours",
                "linear_fingerprint": None if scorer is None else array_digest(scorer.arrays("path"))}

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        self.index.save(Path(folder) / PRIOR_DIR)
        if self.path_scorer is not None:
            save_file(self.path_scorer.arrays("path"), str(Path(folder) / PRIOR_DIR / LINEAR_FILE))
        return {**self.describe(), "path": PRIOR_DIR}

    @classmethod
    def load(cls, folder: Path, recorded: dict, taxonomy: Taxonomy) -> "LabelPrior":
        """The prior a checkpoint (or an export's assets) stores; refuses a changed index."""
        from safetensors.numpy import load_file

        where = Path(folder) / recorded.get("path", PRIOR_DIR)
        index = LexicalIndex.load(where)
        if index.fingerprint() != recorded["fingerprint"]:
            raise ValueError(f"{where}: index {index.fingerprint()} is not the one this model "
                             f"was trained with ({recorded['fingerprint']})")
        scorer = None
        if recorded.get("paths_from") == "linear classifier":
            if not (where / LINEAR_FILE).is_file():
                raise FileNotFoundError(f"{where / LINEAR_FILE} is missing: the prior's path classifier")
            arrays = load_file(str(where / LINEAR_FILE))
            if array_digest(arrays) != recorded.get("linear_fingerprint"):
                raise ValueError(f"{where / LINEAR_FILE} does not match the fingerprint recorded for this model")
            scorer = LinearScorer.from_arrays(arrays, "path")
        return cls(index, taxonomy, PriorConfig.from_dict(recorded), scorer)


def _softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)
