"""Lexical neighbours: hashed TF-IDF (word 1-2-grams + char 3-5-grams within words) over a catalog's
training rows, searched by an inverted index in numpy.

The tagger's label prior (:mod:`shelfml.prior`) is built from these neighbours; product-line words that only
one brand sells, sizes and category nouns all become features without any tokenizer or model. Everything here
is numpy + zlib (no scikit-learn, no torch), so the same code runs at training, export and in the server.

An index is a folder: ``lexical.safetensors`` (the inverted lists, idf, row label ids) + ``lexical.json``
(feature settings, counts, fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

ARRAYS = "lexical.safetensors"
MANIFEST = "lexical.json"
_WORD = re.compile(r"\w+", re.UNICODE)
# A linear classifier keeps its strongest weights: pruned to 500 per class it lost 1 path and 3 brand points on
# Flipkart against 2,000 (8,000: within 0.3 points of unpruned); 4 M weights are 32 MB.
WEIGHT_BUDGET, MIN_PER_CLASS, MAX_PER_CLASS = 4_000_000, 500, 8_000


def inverted_lists(features: np.ndarray, owners: np.ndarray, weights: np.ndarray, bits: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature id, owner, weight) triples -> (ptr [2**bits + 1], owners, weights) sorted by feature: the owners
    (rows, classes) and weights of feature f are ``[ptr[f], ptr[f + 1])``."""
    order = np.argsort(features, kind="stable")
    ptr = np.zeros((1 << bits) + 1, dtype=np.int64)
    np.add.at(ptr, features + 1, 1)
    return np.cumsum(ptr), owners[order], weights[order]


def accumulate(ptr: np.ndarray, owners: np.ndarray, weights: np.ndarray, ids: np.ndarray, values: np.ndarray,
               size: int) -> np.ndarray:
    """Sum over a query's features of value x weight per owner: ``[size]`` float64 (dot products)."""
    starts, ends = ptr[ids], ptr[ids + 1]
    lengths = ends - starts
    if not lengths.sum():
        return np.zeros(size)
    take = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends) if b > a])
    return np.bincount(owners[take], weights=weights[take] * np.repeat(values, lengths), minlength=size)


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """A short content hash of named arrays (name order independent)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode() + np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Featurizer:
    """Text -> L2-normalised sparse TF-IDF vector over ``2**bits`` hashed features. With ``blocks``, words (and
    word pairs) hash into the lower half of the features and character n-grams into the upper half, and each half
    is normalised on its own, as two TF-IDF vectorisers side by side: the many character n-grams no longer
    outweigh the words (the label prior's classifiers gained 1-3 points of path and brand accuracy on Sephora
    and Flipkart; indexes written before it read ``blocks: false``)."""

    bits: int = 20
    char_min: int = 3
    char_max: int = 5
    max_chars: int = 1000  # longer texts are cut first: the title and the start of the description matter
    blocks: bool = False

    def terms(self, text: str) -> list[str]:
        words = _WORD.findall(str(text)[: self.max_chars].lower())
        terms = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        for word in words:
            padded = f" {word} "
            for n in range(self.char_min, self.char_max + 1):
                terms += [f"c:{padded[i:i + n]}" for i in range(max(1, len(padded) - n + 1))]
        return terms

    def counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature ids, sublinear term frequencies 1 + log tf), ids sorted."""
        terms = self.terms(text)
        if self.blocks:
            half = self.bits - 1
            mask = (1 << half) - 1
            ids = np.fromiter(((zlib.crc32(t.encode("utf-8")) & mask) | ((t[0] == "c") << half) for t in terms),
                              dtype=np.int64, count=len(terms))
        else:
            mask = (1 << self.bits) - 1
            ids = np.fromiter((zlib.crc32(t.encode("utf-8")) & mask for t in terms), dtype=np.int64, count=len(terms))
        if not len(ids):
            return ids, np.zeros(0, np.float32)
        ids, tf = np.unique(ids, return_counts=True)
        return ids, (1.0 + np.log(tf)).astype(np.float32)

    def normalise(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``values`` over unit length: the whole vector, or each block (words, character n-grams) on its own."""
        parts = (ids < (1 << (self.bits - 1)), ids >= (1 << (self.bits - 1))) if self.blocks else (slice(None),)
        out = np.array(values, dtype=np.float32)
        for part in parts:
            norm = float(np.sqrt((out[part] * out[part]).sum()))
            if norm > 0:
                out[part] = out[part] / norm
        return out

    def vector(self, text: str, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, tf = self.counts(text)
        return ids, self.normalise(ids, tf * idf[ids])


class LexicalIndex:
    """The training rows' TF-IDF vectors as inverted lists (feature -> rows, weights), plus each row's labels."""

    def __init__(self, featurizer: Featurizer, idf: np.ndarray, ptr: np.ndarray, rows: np.ndarray,
                 weights: np.ndarray, labels: dict[str, np.ndarray], keys: np.ndarray) -> None:
        self.featurizer, self.idf = featurizer, idf
        self.ptr, self.rows, self.weights = ptr, rows, weights
        self.labels = labels  # name -> int32 [rows] (e.g. "path", "brand": ids into the taxonomy's lists)
        self.keys = keys  # int64 [rows]: hash of each row's normalised title (excluded from its own search)
        self.size = len(keys)

    @classmethod
    def build(cls, texts: Sequence[str], labels: dict[str, Sequence[int]], keys: Sequence[str],
              featurizer: Featurizer | None = None) -> "LexicalIndex":
        """Index ``texts`` (one per training row) with their label ids and normalised-title keys."""
        featurizer = featurizer or Featurizer()
        counted = [featurizer.counts(t) for t in texts]
        df = np.zeros(1 << featurizer.bits, dtype=np.float64)
        for ids, _ in counted:
            df[ids] += 1
        idf = np.log((1 + len(texts)) / (1 + df)).astype(np.float32) + 1.0
        feats, rows, weights = [], [], []
        for row, (ids, tf) in enumerate(counted):
            feats.append(ids)
            rows.append(np.full(len(ids), row, dtype=np.int32))
            weights.append(featurizer.normalise(ids, tf * idf[ids]))
        lists = inverted_lists(np.concatenate(feats), np.concatenate(rows), np.concatenate(weights), featurizer.bits)
        return cls(featurizer, idf, *lists, {k: np.asarray(v, dtype=np.int32) for k, v in labels.items()},
                   title_keys(keys))

    def scores(self, text: str) -> np.ndarray:
        """Cosine similarity of ``text`` to every indexed row ([rows] float32)."""
        ids, values = self.featurizer.vector(text, self.idf)
        return accumulate(self.ptr, self.rows, self.weights, ids, values, self.size).astype(np.float32)

    def search(self, texts: Sequence[str], k: int, exclude: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(rows [n, k] int64, scores [n, k] float32), best first; rows whose normalised title equals
        ``exclude[i]`` are skipped (training rows never see themselves). Missing neighbours: row -1, score 0."""
        k = max(1, min(k, self.size))
        out_rows = np.full((len(texts), k), -1, dtype=np.int64)
        out_scores = np.zeros((len(texts), k), dtype=np.float32)
        skip = title_keys(exclude) if exclude is not None else None
        for i, text in enumerate(texts):
            scores = self.scores(text)
            if skip is not None:
                scores[self.keys == skip[i]] = -1.0
            top = np.argpartition(-scores, k - 1)[:k] if self.size > k else np.arange(self.size)
            top = top[np.lexsort((top, -scores[top]))]  # ties by row: deterministic
            keep = scores[top] > 0
            out_rows[i, : keep.sum()], out_scores[i, : keep.sum()] = top[keep], scores[top][keep]
        return out_rows, out_scores

    # -- files ------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        return {"idf": self.idf, "ptr": self.ptr, "rows": self.rows, "weights": self.weights, "keys": self.keys,
                **{f"label.{k}": v for k, v in self.labels.items()}}

    def fingerprint(self) -> str:
        return array_digest(self.arrays())

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.arrays(), str(folder / ARRAYS))
        manifest = {"featurizer": asdict(self.featurizer), "rows": self.size, "entries": int(len(self.rows)),
                    "labels": sorted(self.labels), "fingerprint": self.fingerprint()}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return manifest

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / MANIFEST).is_file() or not (folder / ARRAYS).is_file():
            raise FileNotFoundError(f"{folder} is not a lexical index ({MANIFEST} and {ARRAYS} expected)")
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / ARRAYS))
        labels = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("label.")}
        index = cls(Featurizer(**manifest["featurizer"]), arrays["idf"], arrays["ptr"], arrays["rows"],
                    arrays["weights"], labels, arrays["keys"])
        if index.fingerprint() != manifest["fingerprint"]:
            raise ValueError(f"{folder / ARRAYS} does not match the fingerprint in {MANIFEST}: corrupt or replaced")
        return index


def title_keys(titles: Sequence[str]) -> np.ndarray:
    """A 64-bit key per normalised title (:func:`shelfml.data.normalise_title`, the split's grouping key)."""
    from shelfml.data import normalise_title

    return np.array([int.from_bytes(hashlib.blake2b(normalise_title(t).encode("utf-8"), digest_size=8).digest(),
                                    "little", signed=True) for t in titles], dtype=np.int64).reshape(len(titles))


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Neighbour weights ∝ exp(score / T) over the found neighbours (score 0 = none)."""
    logits = np.where(scores > 0, scores / max(temperature, 1e-6), -math.inf)
    logits = logits - np.max(np.where(np.isfinite(logits), logits, -1e30), axis=1, keepdims=True)
    weights = np.where(np.isfinite(logits), np.exp(logits), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


class LinearScorer:
    """A linear classifier over the same hashed TF-IDF features (one-vs-rest LinearSVC, fitted at training
    time with scikit-learn), kept as its strongest weights per class in inverted lists (``top`` per class, or by
    default ``WEIGHT_BUDGET`` weights shared by the classes, between ``MIN_PER_CLASS`` and ``MAX_PER_CLASS``
    each): scoring needs numpy only. Classes never seen in training score ``ABSENT``."""

    ABSENT = -10.0

    def __init__(self, ptr: np.ndarray, classes: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> None:
        self.ptr, self.classes, self.weights, self.bias = ptr, classes, weights, bias

    @classmethod
    def fit(cls, vectors: Sequence[tuple[np.ndarray, np.ndarray]], y: Sequence[int], n_classes: int, bits: int,
            top: int | None = None, max_features: int = 1 << 17, c: float = 0.5) -> "LinearScorer":
        from scipy.sparse import csr_matrix
        from sklearn.svm import LinearSVC

        ids = np.concatenate([i for i, _ in vectors])
        used, counts = np.unique(ids, return_counts=True)
        keep = used[np.argsort(-counts, kind="stable")[:max_features]]  # the most frequent features
        features = np.sort(keep)
        rows, cols, vals = [], [], []
        for r, (i, v) in enumerate(vectors):
            mask = np.isin(i, features)
            rows.append(np.full(int(mask.sum()), r))
            cols.append(np.searchsorted(features, i[mask]))
            vals.append(v[mask])
        x = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(len(vectors), len(features)))
        y = np.asarray(y)
        bias = np.full(n_classes, cls.ABSENT, dtype=np.float32)
        if len(np.unique(y)) < 2:  # one class: it always wins
            bias[y[0]] = 1.0
            return cls(np.zeros((1 << bits) + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), bias)
        model = LinearSVC(C=c).fit(x, y)
        coef = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_[0], model.coef_[0]])
        intercept = model.intercept_ if len(model.classes_) > 2 else np.array([-model.intercept_[0],
                                                                                model.intercept_[0]])
        feats, owners, weights = [], [], []
        if top is None:
            top = int(np.clip(WEIGHT_BUDGET // len(model.classes_), MIN_PER_CLASS, MAX_PER_CLASS))
        for k, label in enumerate(model.classes_):
            strongest = np.argsort(-np.abs(coef[k]))[:top]
            strongest = strongest[coef[k][strongest] != 0]
            feats.append(features[strongest])
            owners.append(np.full(len(strongest), label, dtype=np.int32))
            weights.append(coef[k][strongest].astype(np.float32))
            bias[label] = intercept[k]
        return cls(*inverted_lists(np.concatenate(feats), np.concatenate(owners), np.concatenate(weights), bits), bias)

    def scores(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Decision values of one query vector for every class."""
        return self.bias + accumulate(self.ptr, self.classes, self.weights, ids, values, len(self.bias))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.ptr": self.ptr, f"{prefix}.classes": self.classes, f"{prefix}.weights": self.weights,
                f"{prefix}.bias": self.bias}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> "LinearScorer":
        return cls(*(arrays[f"{prefix}.{k}"] for k in ("ptr", "classes", "weights", "bias")))
