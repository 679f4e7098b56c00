"""The tagger's label prior over the taxonomy's paths and brands, from the product's text alone
(:mod:`shelfml.lexical`: hashed TF-IDF features): paths and brands each from a linear classifier (one-vs-rest
LinearSVC, its strongest weights kept; brands are often told by product-line words only one brand sells; a brand
seen once and written in the text is learnt as the place it is written, so brands never seen in training are
copied). A prior
without a classifier (an older checkpoint) takes that field from the labels of the product's lexical neighbours.

The one decode loop adds ``weight * log(prior mass)`` to the logits of every allowed token, the mass of a token
being the prior probability of all the paths (or brands) under that child of the trie; the weight is fitted on
validation at training time. The prior is part of the model: its index is stored in the checkpoint
(``lexical/``), exported with the assets and applied by eager, ONNX Runtime and served decoding alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.constraint import COPY_CLASSES, copy_class
from shelfml.labels import Label, Taxonomy
from shelfml.lexical import Featurizer, LexicalIndex, LinearScorer, array_digest, softmax_weights

PRIOR_DIR = "lexical"  # inside a checkpoint and an export's assets
LINEAR_FILE = "linear.safetensors"  # the path and brand classifiers, beside the lexical index
LINEAR_C = 1.0  # the classifiers' regularisation (C 0.5: 0.4 path and 0.4 brand points lower on Flipkart)
CACHE_ROWS = 20_000  # texts whose evidence is kept; the cache starts afresh beyond this


@dataclass
class PriorConfig:
    """How neighbours become a distribution (recorded in the checkpoint manifest)."""

    k: int = 20  # neighbours
    temperature: float = 0.05  # softmax temperature over the brands' evidence (classifier decision values)
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
    """Prior probabilities of one batch: over ``taxonomy.paths``, and over ``[""] + taxonomy.brands`` then (when the
    brand classifier has them) the copy classes, together summing to 1: the brand is the span of the product's
    own text of that shape (:func:`shelfml.constraint.copy_class_of`), the way brands unseen in training are named."""

    paths: np.ndarray  # [rows, n_paths]
    brands: np.ndarray  # [rows, 1 + n_brands]
    weight: float  # on the path tokens
    brand_weight: float  # on the brand tokens
    copy: np.ndarray | None = None  # [rows, COPY_CLASSES]

    def take(self, rows: np.ndarray) -> "PriorBatch":
        """The prior of some of the rows (repeated as often as they are named)."""
        return PriorBatch(self.paths[rows], self.brands[rows], self.weight, self.brand_weight,
                          None if self.copy is None else self.copy[rows])


class LabelPrior:
    """Lexical neighbours -> :class:`PriorBatch`."""

    def __init__(self, index: LexicalIndex, taxonomy: Taxonomy, cfg: PriorConfig,
                 path_scorer: LinearScorer | None = None, brand_scorer: LinearScorer | None = None) -> None:
        self.index, self.taxonomy, self.cfg = index, taxonomy, cfg
        self.path_scorer, self.brand_scorer = path_scorer, brand_scorer
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
        index = LexicalIndex.build(texts, ids, titles, Featurizer(blocks=True))
        vectors = [index.featurizer.vector(t, index.idf) for t in texts]
        bits, n_brands = index.featurizer.bits, 1 + len(taxonomy.brands)
        paths = LinearScorer.fit(vectors, ids["path"], len(taxonomy.paths), bits, c=LINEAR_C)
        # a brand seen once in training and written in the text is learnt as where it is written (its copy
        # class): the brands seen once stand for those never seen (as in Good-Turing estimates, their share is
        # the share of new brands to expect), which are named from the same evidence; the others as themselves
        once = {b for b, n in Counter(lab.brand for lab in labels).items() if n == 1}
        copied = [copy_class(t, lab.brand) if lab.brand in once else -1 for t, lab in zip(texts, labels)]
        targets = [n_brands + c if c >= 0 else b for c, b in zip(copied, ids["brand"])]
        brands = LinearScorer.fit(vectors, targets, n_brands + COPY_CLASSES, bits, c=LINEAR_C)
        return cls(index, taxonomy, cfg or PriorConfig(), paths, brands)

    def _linear(self, text: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The path and brand classifiers' decision values of one text (None: no such classifier)."""
        if self.path_scorer is None and self.brand_scorer is None:
            return None, None
        vector = self.index.featurizer.vector(text, self.index.idf)
        return tuple(None if s is None else s.scores(*vector) for s in (self.path_scorer, self.brand_scorer))

    def evidence(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(neighbour rows [n, k], their similarities [n, k], the path and the brand classifiers' decision values
        or None) of each text: what the distributions are made of, independent of the temperatures. Cached per
        text (catalogs repeat titles; the validation search decodes the same rows at every grid point)."""
        if self._cache_k != self.cfg.k or len(self._cache) + len(texts) > CACHE_ROWS:
            self._cache, self._cache_k = {}, self.cfg.k
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            rows, scores = self._search(todo)
            for i, text in enumerate(todo):
                self._cache[text] = (rows[i], scores[i], *self._linear(text))
        found = [self._cache[t] for t in texts]  # neighbours are None when both classifiers give the labels
        stack = lambda j: None if found[0][j] is None else np.stack([f[j] for f in found])  # noqa: E731
        return stack(0), stack(1), stack(2), stack(3)

    def batch(self, texts: Sequence[str], exclude_titles: Sequence[str] | None = None) -> PriorBatch:
        """The prior of ``texts``; ``exclude_titles``: a training row's own normalised title is never its neighbour
        (uncached)."""
        if exclude_titles is None:
            rows, scores, path_linear, brand_linear = self.evidence(texts)
        else:
            rows, scores = self._search(texts, exclude_titles)
            linear = [self._linear(t) for t in texts]
            path_linear, brand_linear = (None if linear[0][j] is None else np.stack([v[j] for v in linear])
                                         for j in (0, 1))
        paths = self._neighbour_probs(rows, scores, "path", self.n_paths) if path_linear is None else _softmax(
            path_linear / max(self.cfg.path_temperature, 1e-6))
        brands = self._neighbour_probs(rows, scores, "brand", self.n_brands) if brand_linear is None else _softmax(
            brand_linear / max(self.cfg.temperature, 1e-6))
        smooth = self.cfg.smoothing
        paths, brands = (1 - smooth) * paths + smooth / self.n_paths, (1 - smooth) * brands + smooth / brands.shape[1]
        copy = brands[:, self.n_brands :] if self.copies else None
        return PriorBatch(paths, brands[:, : self.n_brands], self.cfg.weight, self.cfg.brand_weight, copy)

    @property
    def copies(self) -> bool:
        """Whether the brand classifier gives copy classes (checkpoints before them do not)."""
        return self.brand_scorer is not None and len(self.brand_scorer.bias) == self.n_brands + COPY_CLASSES

    def oracle(self, texts: Sequence[str], labels: Sequence[Label], k: int = 5) -> dict:
        """How often the gold path, and the gold brand, is among the prior's ``k`` most probable (a copy class
        stands for the spans of the text of its shape): the most any decoding of the prior can reach at ``k``."""
        from shelfml.constraint import positioned_spans, copy_class_of
        from shelfml.metrics import same_brand

        batch = self.batch(texts)
        brand_names = [""] + list(self.taxonomy.brands)
        path_hits = brand_hits = 0
        for i, (text, label) in enumerate(zip(texts, labels)):
            top_paths = np.argsort(-batch.paths[i], kind="stable")[:k]
            path_hits += any(self.taxonomy.paths[j] == label.path for j in top_paths)
            scores = batch.brands[i] if batch.copy is None else np.concatenate((batch.brands[i], batch.copy[i]))
            candidates = []
            for j in np.argsort(-scores, kind="stable")[:k].tolist():
                if j < self.n_brands:
                    candidates.append(brand_names[j])
                else:
                    candidates += [span for span, first, size in positioned_spans(text)
                                   if copy_class_of(np.array([first]), np.array([size]))[0] == j - self.n_brands]
            brand_hits += any(same_brand(label.brand, c) for c in candidates)
        return {"k": k, "path": path_hits / max(len(texts), 1), "brand": brand_hits / max(len(texts), 1)}

    def _search(self, texts: Sequence[str], exclude_titles: Sequence[str] | None = None) -> tuple:
        """The neighbours of ``texts``, searched only for a field no classifier gives: ([None] * n) x 2 otherwise
        (no search on the serving hot path)."""
        if self.path_scorer is not None and self.brand_scorer is not None:
            return [None] * len(texts), [None] * len(texts)
        return self.index.search(texts, self.cfg.k, exclude_titles)

    def _neighbour_probs(self, rows: np.ndarray, scores: np.ndarray, name: str, size: int) -> np.ndarray:
        """Similarity-softmax weights of the neighbours summed per label (uniform when a text has none)."""
        weights = softmax_weights(scores, self.cfg.temperature)
        probs = np.zeros((len(rows), size), dtype=np.float64)
        r, c = np.nonzero(rows >= 0)
        np.add.at(probs, (r, self.index.labels[name][rows[r, c]]), weights[r, c])
        probs[probs.sum(axis=1) == 0] = 1.0 / size
        return probs

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name, scorer in (("path", self.path_scorer), ("brand", self.brand_scorer)):
            if scorer is not None:
                arrays |= scorer.arrays(name)
        return arrays

    def describe(self) -> dict:
        source = lambda scorer: "linear classifier" if scorer is not None else "neighbours"  # noqa: E731
        arrays = self._arrays()
        return {**self.cfg.to_dict(), "index_rows": self.index.size, "fingerprint": self.index.fingerprint(),
                "paths_from": source(self.path_scorer), "brands_from": source(self.brand_scorer),
                "copy_classes": COPY_CLASSES if self.copies else 0,
                "linear_fingerprint": array_digest(arrays) if arrays else None}

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        self.index.save(Path(folder) / PRIOR_DIR)
        if self._arrays():
            save_file(self._arrays(), str(Path(folder) / PRIOR_DIR / LINEAR_FILE))
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
        scorers = {}
        linear = [name for name in ("path", "brand") if recorded.get(f"{name}s_from") == "linear classifier"]
        if linear:
            if not (where / LINEAR_FILE).is_file():
                raise FileNotFoundError(f"{where / LINEAR_FILE} is missing: the prior's {' and '.join(linear)} classifier")
            arrays = load_file(str(where / LINEAR_FILE))
            if array_digest(arrays) != recorded.get("linear_fingerprint"):
                raise ValueError(f"{where / LINEAR_FILE} does not match the fingerprint recorded for this model")
            scorers = {name: LinearScorer.from_arrays(arrays, name) for name in linear}
        return cls(index, taxonomy, PriorConfig.from_dict(recorded), scorers.get("path"), scorers.get("brand"))


def _softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)
