"""The price model's wide branch: a ridge regression of log1p(price) the head starts from and corrects.

Its inputs are what a bag of words misses: the category path and the brand, each decided by a linear classifier
over hashed TF-IDF n-grams (:class:`shelfml.lexical.LinearScorer`, the tagger prior's classifiers, when the
catalog has label columns), one-hot; the sizes and pack count read from the text as numbers
(:mod:`shelfml.quantities`: log amount per dimension, log pack); and the n-grams themselves (weighted, the weight
chosen on validation; the only text input of a catalog without labels). The ridge is fitted on the training
split with the gold path and brand (the classifiers decide them at prediction time), alpha and the n-gram weight
chosen on validation SMAPE. The training rows get out-of-fold predictions (folds grouped by normalised title) for
the head to learn from. Prediction is numpy only, so the served model computes the feature from the text it
receives. Saved as ``wide/`` in the checkpoint: ``wide.safetensors`` + ``wide.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Sequence

import numpy as np

from shelfml.lexical import Featurizer, LinearScorer, title_keys
from shelfml.quantities import FEATURES, parse_quantities

WIDE_DIR = "wide"
ARRAYS, MANIFEST = "wide.safetensors", "wide.json"
ALPHAS = (0.1, 0.3, 1.0, 3.0)
TEXT_WEIGHTS = (0.0, 0.3, 1.0)  # of the n-gram block beside the classifiers' decisions (1.0 alone without them)
FOLDS = 5


@dataclass
class WideFit:
    """What was fitted, recorded in the checkpoint."""

    alpha: float
    text_weight: float
    blocks: list[str]
    validation_smape: float
    grid: dict[str, float]
    folds: int = FOLDS


class WideRidge:
    """Text -> log1p(price): intercept + path weight + brand weight + quantity weights . features + n-grams."""

    def __init__(self, featurizer: Featurizer, idf: np.ndarray, arrays: dict[str, np.ndarray],
                 scorers: dict[str, LinearScorer], fit: WideFit | None = None) -> None:
        self.featurizer, self.idf, self.arrays, self.scorers, self.fit_info = featurizer, idf, arrays, scorers, fit
        self.text = np.zeros(1 << featurizer.bits, np.float32)  # the n-gram weights, dense for lookup
        self.text[arrays["text_ids"]] = arrays["text_weights"]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """log1p(price) per text, float32."""
        a = self.arrays
        out = np.empty(len(texts), np.float32)
        for i, text in enumerate(texts):
            ids, values = self.featurizer.vector(text, self.idf)
            lp = float(a["intercept"][0]) + float(values @ self.text[ids])
            lp += float(np.dot(a["quantity"], parse_quantities(text).features()))
            for name, scorer in self.scorers.items():
                lp += float(a[name][int(np.argmax(scorer.scores(ids, values)))])
            out[i] = lp
        return out

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: Sequence[str], log_prices: np.ndarray, val_texts: Sequence[str], val_prices: np.ndarray,
            titles: Sequence[str], labels: dict[str, Sequence[Hashable]] | None = None,
            featurizer: Featurizer | None = None) -> tuple["WideRidge", np.ndarray]:
        """(the ridge fitted on the training rows with the settings best on validation, its out-of-fold
        predictions of the training rows). ``labels``: gold ``path`` / ``brand`` per training row (a field with
        fewer than two values is left out)."""
        from shelfml.metrics import smape
        from shelfml.price.config import from_log

        featurizer = featurizer or Featurizer()
        counted = [featurizer.counts(t) for t in texts]
        df = np.zeros(1 << featurizer.bits, dtype=np.float64)
        for ids, _ in counted:
            df[ids] += 1
        idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        vectors = [featurizer.vector(t, idf) for t in texts]
        val_vectors = [featurizer.vector(t, idf) for t in val_texts]
        classes, scorers, gold, decided = {}, {}, {}, {}
        for name, values in (labels or {}).items():
            names = sorted(set(values))
            if len(names) < 2:
                continue
            index = {v: i for i, v in enumerate(names)}
            classes[name], gold[name] = len(names), np.array([index[v] for v in values])
            # 500 weights per class, as the branch was measured (the tagger prior's larger budget moved the
            # built-in catalog's branch-alone SMAPE from 31.43 to 32.52)
            scorers[name] = LinearScorer.fit(vectors, gold[name], len(names), featurizer.bits, top=500)
            decided[name] = np.array([int(np.argmax(scorers[name].scores(*v))) for v in val_vectors])
        used = np.flatnonzero(df)
        blocks = _Blocks(used, classes)
        x_parts = blocks.parts(vectors, texts, gold)
        val_parts = blocks.parts(val_vectors, val_texts, decided)
        y = np.asarray(log_prices, dtype=np.float64)
        grid = {}
        for tw in (TEXT_WEIGHTS if scorers else (1.0,)):
            x, xv = blocks.join(x_parts, tw), blocks.join(val_parts, tw)
            for alpha in ALPHAS:
                grid[(alpha, tw)] = smape(val_prices, from_log(_ridge(x, y, alpha).predict(xv)))
        alpha, tw = min(grid, key=grid.get)
        x = blocks.join(x_parts, tw)
        model = _ridge(x, y, alpha)
        oof = np.empty(len(texts), np.float32)
        groups = title_keys(titles)
        from sklearn.model_selection import GroupKFold

        for train_rows, held_rows in GroupKFold(min(FOLDS, len(np.unique(groups)))).split(x, y, groups):
            oof[held_rows] = _ridge(x[train_rows], y[train_rows], alpha).predict(x[held_rows])
        fit = WideFit(alpha, tw, ["quantities", "n-grams", *scorers], round(grid[alpha, tw], 4),
                      {f"alpha={a},text={t}": round(v, 4) for (a, t), v in grid.items()})
        return cls(featurizer, idf, blocks.arrays(model, tw), scorers, fit), oof

    # -- files --------------------------------------------------------------------------------

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"idf": self.idf, **self.arrays}
        for name, scorer in self.scorers.items():
            arrays |= scorer.arrays(f"scorer.{name}")
        save_file(arrays, str(folder / ARRAYS))
        manifest = {"featurizer": asdict(self.featurizer), "scorers": sorted(self.scorers),
                    "fit": self.fit_info and asdict(self.fit_info)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return manifest

    @classmethod
    def load(cls, folder: Path) -> "WideRidge":
        from safetensors.numpy import load_file

        folder = Path(folder)
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / ARRAYS))
        scorers = {name: LinearScorer.from_arrays(arrays, f"scorer.{name}") for name in manifest["scorers"]}
        own = {k: v for k, v in arrays.items() if not k.startswith("scorer.") and k != "idf"}
        fit = manifest.get("fit")
        return cls(Featurizer(**manifest["featurizer"]), arrays["idf"], own, scorers, fit and WideFit(**fit))


class _Blocks:
    """The ridge's design matrix, block by block: quantities, n-grams (weighted), one-hot classes."""

    def __init__(self, used: np.ndarray, classes: dict[str, int]) -> None:
        self.used, self.classes = used, classes

    def parts(self, vectors, texts: Sequence[str], ids: dict[str, np.ndarray]) -> list:
        from scipy.sparse import csr_matrix

        quantities = csr_matrix(np.array([parse_quantities(t).features() for t in texts], dtype=np.float64)
                                .reshape(len(texts), FEATURES))
        onehot = [csr_matrix((np.ones(len(texts)), (np.arange(len(texts)), ids[name])), shape=(len(texts), n))
                  for name, n in self.classes.items()]
        return [quantities, _matrix(vectors, self.used), *onehot]

    @staticmethod
    def join(parts: list, text_weight: float):
        from scipy.sparse import hstack

        quantities, text, *onehot = parts
        return hstack([quantities, text * text_weight, *onehot]).tocsr()

    def arrays(self, model, text_weight: float) -> dict[str, np.ndarray]:
        coef = model.coef_.astype(np.float32)
        q, t = FEATURES, len(self.used)
        text = coef[q:q + t] * np.float32(text_weight)
        keep = text != 0
        out = {"intercept": np.array([model.intercept_], np.float32), "quantity": coef[:q],
               "text_ids": self.used[keep].astype(np.int64), "text_weights": text[keep]}
        start = q + t
        for name, n in self.classes.items():
            out[name] = coef[start:start + n]
            start += n
        return out


def _matrix(vectors: list[tuple[np.ndarray, np.ndarray]], used: np.ndarray):
    """Sparse rows over the ``used`` features (the vectors: L2-normalised TF-IDF; features outside ``used``
    dropped)."""
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, (ids, values) in enumerate(vectors):
        mask = np.isin(ids, used)
        v = values[mask].astype(np.float64)
        rows.append(np.full(int(mask.sum()), r))
        cols.append(np.searchsorted(used, ids[mask]))
        vals.append(v)
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(vectors), len(used)))


def _ridge(x, y: np.ndarray, alpha: float):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(x, y)
