"""The price neighbour feature: the similarity-weighted median log1p(price) of a product's K nearest
training products and the top similarity (two inputs of the price head)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shelfml.retrieval.index import Neighbour, Retriever


def neighbour_log_price(retriever: Retriever, neighbours: Sequence[Neighbour]) -> float:
    """Similarity-weighted median of the neighbours' log1p(price) (NaN when none has a price)."""
    prices = retriever.metadata["price"].to_numpy(dtype=np.float64)
    logs = np.array([np.log1p(prices[n.row]) for n in neighbours])
    weights = np.array([max(n.score, 1e-6) for n in neighbours])
    ok = np.isfinite(logs)
    if not ok.any():
        return float("nan")
    logs, weights = logs[ok], weights[ok]
    order = np.argsort(logs)
    cum = np.cumsum(weights[order])
    return float(logs[order][np.searchsorted(cum, 0.5 * cum[-1])])


PRICE_FEATURES = ("similarity-weighted median neighbour log1p(price) (NaN: no neighbour has a price)",
                  "top neighbour cosine similarity")


def neighbour_price_features(retriever: Retriever, neighbours: Sequence[Sequence[Neighbour]]) -> np.ndarray:
    """[rows, 2] float32: :data:`PRICE_FEATURES` of each row's neighbours."""
    return np.array([[neighbour_log_price(retriever, ns), ns[0].score if ns else 0.0] for ns in neighbours],
                    dtype=np.float32).reshape(len(neighbours), len(PRICE_FEATURES))


def price_neighbour_features(retriever: Retriever, texts: Sequence[str], k: int = 10,
                             exclude_keys: Sequence[str] | None = None, vectors: np.ndarray | None = None,
                             progress: bool = False) -> np.ndarray:
    """:func:`neighbour_price_features` of ``texts`` (k neighbours; training rows pass ``exclude_keys`` so a
    row never sees its own price)."""
    vectors = retriever.embed(texts, progress) if vectors is None else vectors
    return neighbour_price_features(retriever, retriever.search_vectors(vectors, k, exclude_keys))
