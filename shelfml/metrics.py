"""Evaluation metrics (the same functions score the model, the baseline and later backends)."""

from __future__ import annotations

from typing import Sequence

from shelfml.labels import Label, Taxonomy


def same_brand(a: str, b: str) -> bool:
    """Brands compare case-insensitively, whitespace-normalised."""
    return " ".join(a.casefold().split()) == " ".join(b.casefold().split())


def tagger_metrics(gold: Sequence[Label], pred: Sequence[Label], taxonomy: Taxonomy) -> dict:
    """Per-level accuracy, brand accuracy, item accuracy (every level and the brand right) and the
    fraction of predicted paths that are not in the taxonomy."""
    assert len(gold) == len(pred) > 0, f"need equal, non-empty gold/pred lists, got {len(gold)}/{len(pred)}"
    n = len(gold)
    levels = {
        name: sum(g.path[i] == p.path[i] for g, p in zip(gold, pred) if len(p.path) > i) / n
        for i, name in enumerate(taxonomy.levels)
    }
    brand_ok = [same_brand(g.brand, p.brand) for g, p in zip(gold, pred)]
    item_ok = [g.path == p.path and b for g, p, b in zip(gold, pred, brand_ok)]
    return {
        "items": n,
        "level_accuracy": levels,
        "path_accuracy": sum(g.path == p.path for g, p in zip(gold, pred)) / n,
        "brand_accuracy": sum(brand_ok) / n,
        "item_accuracy": sum(item_ok) / n,
        "invalid_path_rate": sum(p.path not in taxonomy for p in pred) / n,
    }
