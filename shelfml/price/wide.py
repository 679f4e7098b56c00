"""The price model's wide branch: ridge regression of log1p(price) on hashed TF-IDF n-grams (the
:class:`shelfml.lexical.Featurizer` of the tagger's prior: word 1-2-grams, char 3-5-grams within words).

The encoder reads meaning; the wide branch remembers exact words, sizes and product lines: the price head starts
from its prediction and learns the correction (``PriceModel``: ``log_price = softplus(base + head)``). Fitted at
training time on the training split with scikit-learn (alpha chosen on validation SMAPE, as the TF-IDF baseline's
is); the training rows get out-of-fold predictions (folds grouped by normalised title) so the head learns on
predictions as good as the ones it will see. Prediction is numpy only, so the served model computes the feature
from the text it receives. Saved as ``wide/`` in the checkpoint: ``wide.safetensors`` (idf, feature ids,
weights) + ``wide.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.lexical import Featurizer, title_keys

WIDE_DIR = "wide"
ARRAYS, MANIFEST = "wide.safetensors", "wide.json"
ALPHAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # the baseline's, and lower (hashed features are sparser)
FOLDS = 5


@dataclass
class WideFit:
    """What was fitted, recorded in the checkpoint."""

    alpha: float
    features: int
    validation_smape: dict[str, float]
    folds: int = FOLDS


class WideRidge:
    """Ridge on hashed TF-IDF vectors: text -> log1p(price)."""

    def __init__(self, featurizer: Featurizer, idf: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                 intercept: float, fit: WideFit | None = None) -> None:
        self.featurizer, self.idf, self.intercept, self.fit_info = featurizer, idf, float(intercept), fit
        self.ids, self.weights = ids, weights  # the features with a weight (sorted) and their weights
        self.dense = np.zeros(1 << featurizer.bits, np.float32)
        self.dense[ids] = weights

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """log1p(price) per text, float32."""
        out = np.empty(len(texts), np.float32)
        for i, text in enumerate(texts):
            ids, values = self.featurizer.vector(text, self.idf)
            out[i] = self.intercept + float(values @ self.dense[ids])
        return out

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, texts: Sequence[str], log_prices: np.ndarray, val_texts: Sequence[str], val_prices: np.ndarray,
            titles: Sequence[str], featurizer: Featurizer | None = None,
            alphas: Sequence[float] = ALPHAS) -> tuple["WideRidge", np.ndarray]:
        """(the ridge fitted on every training row with the alpha best on validation, its out-of-fold
        predictions of the training rows: folds grouped by normalised ``titles``, the split's own grouping)."""
        from sklearn.model_selection import GroupKFold

        from shelfml.metrics import smape
        from shelfml.price.config import from_log

        featurizer = featurizer or Featurizer()
        counted = [featurizer.counts(t) for t in texts]
        df = np.zeros(1 << featurizer.bits, dtype=np.float64)
        for ids, _ in counted:
            df[ids] += 1
        idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)
        used = np.flatnonzero(df)
        x = _matrix([(ids, tf * idf[ids]) for ids, tf in counted], used)
        x_val = _matrix([featurizer.vector(t, idf) for t in val_texts], used, normalised=True)
        y = np.asarray(log_prices, dtype=np.float64)
        scores = {a: smape(val_prices, from_log(_ridge(x, y, a).predict(x_val))) for a in alphas}
        alpha = min(scores, key=scores.get)
        model = _ridge(x, y, alpha)
        oof = np.empty(len(texts), np.float32)
        groups = title_keys(titles)
        folds = min(FOLDS, len(np.unique(groups)))
        for train_rows, held_rows in GroupKFold(folds).split(x, y, groups):
            oof[held_rows] = _ridge(x[train_rows], y[train_rows], alpha).predict(x[held_rows])
        keep = model.coef_ != 0
        fit = WideFit(alpha, int(keep.sum()), {str(a): round(s, 4) for a, s in scores.items()}, folds)
        return cls(featurizer, idf, used[keep].astype(np.int64), model.coef_[keep].astype(np.float32),
                   float(model.intercept_), fit), oof

    # -- files --------------------------------------------------------------------------------

    def save(self, folder: Path) -> dict:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"idf": self.idf, "ids": self.ids, "weights": self.weights,
                   "intercept": np.array([self.intercept], np.float32)}, str(folder / ARRAYS))
        manifest = {"featurizer": asdict(self.featurizer), "fit": self.fit_info and asdict(self.fit_info)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return manifest

    @classmethod
    def load(cls, folder: Path) -> "WideRidge":
        from safetensors.numpy import load_file

        folder = Path(folder)
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        arrays = load_file(str(folder / ARRAYS))
        fit = manifest.get("fit")
        return cls(Featurizer(**manifest["featurizer"]), arrays["idf"], arrays["ids"], arrays["weights"],
                   float(arrays["intercept"][0]), fit and WideFit(**fit))


def _matrix(vectors: list[tuple[np.ndarray, np.ndarray]], used: np.ndarray, normalised: bool = False):
    """Sparse rows over the ``used`` features (L2-normalised TF-IDF; features outside ``used`` dropped)."""
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for r, (ids, values) in enumerate(vectors):
        mask = np.isin(ids, used)
        v = values[mask].astype(np.float64)
        if not normalised:
            norm = float(np.sqrt((v * v).sum()))
            v = v / norm if norm > 0 else v
        rows.append(np.full(int(mask.sum()), r))
        cols.append(np.searchsorted(used, ids[mask]))
        vals.append(v)
    return csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(vectors), len(used)))


def _ridge(x, y: np.ndarray, alpha: float):
    from sklearn.linear_model import Ridge

    return Ridge(alpha=alpha).fit(x, y)
