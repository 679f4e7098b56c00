"""Drift of what is served from what a model was trained on: the training split's reference distributions
(stored in the checkpoint manifest's ``drift``: the tagger's top-level category mix, the price model's price
deciles), a sliding window over the last served rows, and the Jensen-Shannon divergence between the two.

Served code: numpy only.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

import numpy as np

DRIFT_WINDOW = 1000  # served rows the divergence is computed over (``shelfml repository --drift-window``)
PRICE_BINS = 10  # price deciles of the training split


def top_level_reference(paths: Iterable[Sequence[str]], top_levels: Sequence[str]) -> dict:
    """The training rows' mix of top-level categories, over every top level of the taxonomy (zero where the
    training split has none)."""
    names = sorted(set(top_levels))
    counts = dict.fromkeys(names, 0)
    for path in paths:
        counts[path[0]] += 1
    total = max(sum(counts.values()), 1)
    return {"feature": "top_level", "categories": names, "probabilities": [counts[n] / total for n in names]}


def price_reference(prices: Sequence[float]) -> dict:
    """The training prices' decile edges and the share of training rows in each bin (ties make it uneven)."""
    prices = np.asarray(prices, dtype=np.float64)
    edges = np.unique(np.quantile(prices, np.linspace(0, 1, PRICE_BINS + 1)[1:-1]))
    shares = np.bincount(np.searchsorted(edges, prices, side="right"), minlength=len(edges) + 1) / len(prices)
    return {"feature": "price_decile", "edges": edges.tolist(), "probabilities": shares.tolist()}


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0: the same distribution, 1: disjoint) of two histograms."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


class DriftWindow:
    """The last ``size`` served values binned like the training reference; :meth:`divergence` is their
    Jensen-Shannon divergence from it once the window is full (None before: a part-filled window is noise)."""

    def __init__(self, reference: dict, size: int = DRIFT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"the drift window must hold at least 1 row, got {size}")
        self.feature, self.size = reference["feature"], size
        self.reference = np.asarray(reference["probabilities"], np.float64)
        if self.feature == "top_level":
            self._index = {name: i for i, name in enumerate(reference["categories"])}
        else:
            self._edges = np.asarray(reference["edges"], np.float64)
        self._bins: deque[int] = deque()
        self.counts = np.zeros(len(self.reference), np.int64)

    def bins(self, values: Sequence) -> np.ndarray:
        if self.feature == "top_level":
            return np.array([self._index[v] for v in values if v in self._index], dtype=np.int64)
        return np.searchsorted(self._edges, np.asarray(values, np.float64), side="right")

    def add(self, values: Sequence) -> None:
        for b in self.bins(values)[-self.size:]:
            if len(self._bins) == self.size:
                self.counts[self._bins.popleft()] -= 1
            self._bins.append(int(b))
            self.counts[b] += 1

    @property
    def rows(self) -> int:
        return len(self._bins)

    def divergence(self) -> float | None:
        return jensen_shannon(self.counts, self.reference) if self.rows == self.size else None
