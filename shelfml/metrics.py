"""Evaluation metrics (the same functions score the model, the baseline and later backends)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shelfml.labels import Label, Taxonomy


def same_brand(a: str, b: str) -> bool:
    """Brands compare case-insensitively, whitespace-normalised."""
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def tagger_metrics(gold: Sequence[Label], pred: Sequence[Label], taxonomy: Taxonomy) -> dict:
    """Per-level accuracy, brand accuracy, item accuracy (every level and the brand right) and the
    fraction of predicted paths that are not in the taxonomy."""
    assert len(gold) == len(pred) > 0, f"need equal, non-empty gold/pred lists, got {len(gold)}/{len(pred)}"
    n = len(gold)
    def level(path: tuple[str, ...], i: int) -> str:  # "" past the end of a short path
        return path[i] if len(path) > i else ""

    levels = {name: sum(level(g.path, i) == level(p.path, i) and len(p.path) > 0 for g, p in zip(gold, pred)) / n
              for i, name in enumerate(taxonomy.levels)}
    brand_ok = [same_brand(g.brand, p.brand) for g, p in zip(gold, pred)]
    item_ok = [g.path == p.path and b for g, p, b in zip(gold, pred, brand_ok)]
    return {
        "items": n,
        "level_accuracy": levels,
        "path_accuracy": sum(g.path == p.path for g, p in zip(gold, pred)) / n,
        "brand_accuracy": sum(brand_ok) / n,
        "item_accuracy": sum(item_ok) / n,
        "invalid_path_rate": sum(p.path not in taxonomy for p in pred) / n,
        "hierarchical": hierarchical_prf([g.path for g in gold], [p.path for p in pred]),
    }


def hierarchical_prf(gold: Sequence[tuple[str, ...]], pred: Sequence[tuple[str, ...]]) -> dict:
    """Hierarchical precision, recall and F1 as hiclass defines them (micro-averaged): each path stands for the set
    of its nodes with their ancestors (a node is its prefix, so equal names under different parents differ), and
    hP = sum |pred ∩ gold| / sum |pred|, hR = sum |pred ∩ gold| / sum |gold|."""
    common = predicted = true = 0
    for g, p in zip(gold, pred):
        g_nodes, p_nodes = {g[: i + 1] for i in range(len(g))}, {p[: i + 1] for i in range(len(p))}
        common, predicted, true = common + len(g_nodes & p_nodes), predicted + len(p_nodes), true + len(g_nodes)
    precision, recall = common / max(predicted, 1), common / max(true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def smape(y_true, y_pred) -> float:
    """Symmetric MAPE on the 0-200 scale: the mean of 200·|p − y| / (|y| + |p|), a term being 0
    when both are 0."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    assert y.shape == p.shape and y.size > 0, f"need equal, non-empty arrays, got {y.shape}/{p.shape}"
    denominator = np.abs(y) + np.abs(p)
    terms = np.divide(200 * np.abs(p - y), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(terms.mean())


def r2(y_true, y_pred) -> float | None:
    """Coefficient of determination; ``None`` when the truth is constant."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    return None if total == 0 else 1 - float(((y - p) ** 2).sum()) / total


def price_metrics(y_true, y_pred, deciles: int = 10) -> dict:
    """SMAPE (0-200), MAE, RMSE and R² in price space, R² on log1p, and SMAPE per decile of the true
    price (deciles by rank, so each holds a tenth of the rows)."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    assert y.shape == p.shape and y.ndim == 1 and y.size > 0, f"need equal 1-d arrays, got {y.shape}/{p.shape}"
    order = np.argsort(y, kind="stable")
    by_decile = [
        {"decile": k + 1, "price_min": float(y[idx].min()), "price_max": float(y[idx].max()), "items": len(idx),
         "smape": smape(y[idx], p[idx])}
        for k, idx in enumerate(np.array_split(order, min(deciles, y.size)))
    ]
    return {
        "items": int(y.size),
        "smape": smape(y, p),
        "mae": float(np.abs(p - y).mean()),
        "rmse": float(np.sqrt(((p - y) ** 2).mean())),
        "r2": r2(y, p),
        "r2_log1p": r2(np.log1p(np.clip(y, 0, None)), np.log1p(np.clip(p, 0, None))),
        "median_price": float(np.median(y)),
        "smape_by_decile": by_decile,
    }
