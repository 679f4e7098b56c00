"""``shelfml evaluate``'s report: ``report.md`` and the PNGs it links, beside metrics.json and predictions.csv.

Tagger: accuracy per level, brands seen in training / unseen / written in the input, the coverage-accuracy
curve of the confidence, the worst categories, the top-level confusion matrix and scikit-learn's
classification report of the top level, the training curves from the checkpoint's history. Price: predicted
against true prices (log-log), SMAPE per price decile and per top-level category where the catalog has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from shelfml.labels import Label, format_path
from shelfml.metrics import same_brand

THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) + " |" for row in rows]


def coverage_curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, dict]:
    """At each confidence threshold: the share of items kept and their accuracy (what a team acts on)."""
    out = {}
    for t in THRESHOLDS:
        keep = confidence >= t
        out[f"{t:g}"] = {"coverage": float(keep.mean()), "accuracy": float(correct[keep].mean()) if keep.any() else None}
    return out


def brand_split(gold: Sequence[Label], pred: Sequence[Label], inputs: Sequence[str], known: set[str]) -> dict:
    """Brand accuracy for brands seen in training (``known``; no brand counts as seen), unseen ones, those written
    in the input text, and the unseen ones written there (only copying can name them)."""
    groups: dict[str, list[bool]] = {"seen": [], "unseen": [], "in_input": [], "not_in_input": [],
                                     "unseen_in_input": []}
    for g, p, text in zip(gold, pred, inputs):
        ok = same_brand(g.brand, p.brand)
        seen = g.brand in known or not g.brand
        groups["seen" if seen else "unseen"].append(ok)
        written = bool(g.brand) and g.brand.lower() in text.lower()
        groups["in_input" if written else "not_in_input"].append(ok)
        if written and not seen:
            groups["unseen_in_input"].append(ok)
    return {k: {"items": len(v), "accuracy": float(np.mean(v)) if v else None} for k, v in groups.items()}


def tagger_report(out: Path, frame: pd.DataFrame, gold: Sequence[Label], pred: Sequence[Label], metrics: dict,
                  manifest: dict, curves: dict | None = None) -> Path:
    """Write report.md and its PNGs for a tagger evaluation; returns the report's path. ``curves``: per model
    ("tagger", "baseline"), the calibrated probabilities and correctness per row and level."""
    plt = _plt()
    confidence, correct = frame["confidence"].to_numpy(float), frame["correct"].to_numpy(bool)
    curve = metrics["coverage"]
    fig, ax = plt.subplots(figsize=(5, 4))
    order = np.argsort(-confidence)
    kept = np.arange(1, len(order) + 1) / len(order)
    ax.plot(kept, np.cumsum(correct[order]) / np.arange(1, len(order) + 1))
    ax.set_xlabel("coverage (items kept, most confident first)")
    ax.set_ylabel("accuracy of the kept items")
    ax.set_title("coverage vs accuracy")
    fig.tight_layout()
    fig.savefig(out / "coverage.png", dpi=110)
    plt.close(fig)
    lines = [f"# Tagger evaluation: {metrics['split']} split of {metrics['source']} ({metrics['items']} items)", "",
             f"Item accuracy **{metrics['item_accuracy']:.4f}**, path {metrics['path_accuracy']:.4f}, brand "
             f"{metrics['brand_accuracy']:.4f}, invalid paths {metrics['invalid_path_rate']:.4f}.", "",
             "Hierarchical precision / recall / F1 (each path with its ancestors, micro-averaged): " +
             " / ".join(f"{metrics['hierarchical'][k]:.4f}" for k in ("precision", "recall", "f1")) + ".", "",
             *([f"Label prior oracle: the gold path among its {o['k']} most probable for {o['path']:.4f} of the "
                f"items, the gold brand for {o['brand']:.4f}.", ""] if (o := metrics.get("prior_oracle")) else []),
             "## Per level", ""] + _table(["level", "accuracy"], list(metrics["level_accuracy"].items()))
    lines += ["", "## Brands", ""] + _table(["brands", "items", "accuracy"], [
        (k.replace("_", " "), v["items"], v["accuracy"] if v["accuracy"] is not None else "-")
        for k, v in metrics["brand_split"].items()])
    lines += ["", "## Confidence: coverage and accuracy", "", "![coverage](coverage.png)", ""] + _table(
        ["confidence >=", "coverage", "accuracy"],
        [(t, v["coverage"], v["accuracy"] if v["accuracy"] is not None else "-") for t, v in curve.items()])
    if "confidence" in metrics:
        lines += ["", *_confidence_section(out, metrics["confidence"], curves or {}, plt)]
    lines += ["", *_worst_categories(gold, pred), "", *_confusion(out, gold, pred, plt), "",
              *_training_curves(out, manifest.get("history") or [], plt)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _confidence_section(out: Path, conf: dict, curves: dict, plt) -> list[str]:
    """Calibration per level (table + reliability diagram), coverage and precision at the thresholds and the
    coverage-precision curve, the tagger's beside the baseline's."""
    levels = list(conf["levels"])
    probs, correct = (np.array(curves["tagger"][k]) for k in ("probabilities", "correct"))
    base = conf.get("baseline")
    base_rows = curves.get("baseline")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, name in enumerate(levels):
        bins = conf["levels"][name]["reliability"]
        axes[0].plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
        order = np.argsort(-probs[:, i], kind="stable")
        kept = np.arange(1, len(order) + 1)
        axes[1].plot(kept / len(order), np.cumsum(correct[order, i]) / kept, label=f"tagger {name}")
        if base_rows:
            bp, bc = np.array(base_rows["probabilities"])[:, i], np.array(base_rows["correct"])[:, i]
            order = np.argsort(-bp, kind="stable")
            axes[1].plot(kept / len(order), np.cumsum(bc[order]) / kept, "--", label=f"baseline {name}")
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set(xlabel="calibrated probability (bin mean)", ylabel="accuracy", title="reliability (test)")
    axes[1].set(xlabel="coverage (most probable first)", ylabel="precision", title="coverage vs precision",
                ylim=(max(0.0, float(correct.mean(axis=0).min()) - 0.1), 1.005))
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)
    header = ["level", "ECE before", "ECE after", "Brier after", "threshold", "coverage", "precision",
              "baseline coverage", "baseline precision"]
    rows = []
    for name, v in conf["levels"].items():
        b = base["levels"][name]["at_threshold"] if base else {}
        rows.append((name, v["ece_before"], v["ece_after"], v["brier_after"], v["at_threshold"]["threshold"],
                     v["at_threshold"]["coverage"], v["at_threshold"]["precision"] or "-",
                     b.get("coverage", "-"), b.get("precision") or "-"))
    curve = [(f"{name} @ {t}", v["coverage_at_precision"][t],
              base["levels"][name]["coverage_at_precision"][t] if base else "-")
             for name, v in conf["levels"].items() for t in v["coverage_at_precision"]]
    return [f"## Confidence: calibrated per level (thresholds for precision {conf['target_precision']} on validation)",
            "", "![calibration](calibration.png)", "", *_table(header, rows), "",
            f"Back-off answers (a path of at least one level) for {conf['backoff_answers']:.3f} of products "
            f"(precision {conf['backoff_precision']:.3f}); abstains on the full path for {conf['abstain_rate']:.3f}; "
            f"top-{conf['top_k']} path accuracy {conf['top_k_path_accuracy']:.3f}.", "",
            *_table(["level @ precision", "coverage (tagger)", "coverage (baseline)"], curve)]


def _worst_categories(gold: Sequence[Label], pred: Sequence[Label], worst: int = 10, min_items: int = 3) -> list[str]:
    rows: dict[str, list[bool]] = {}
    for g, p in zip(gold, pred):
        rows.setdefault(format_path(g.path), []).append(g.path == p.path)
    stats = sorted(((np.mean(v), len(v), k) for k, v in rows.items() if len(v) >= min_items))[:worst]
    return [f"## The {len(stats)} worst categories (path accuracy, at least {min_items} items)", ""] + _table(
        ["category", "items", "path accuracy"], [(k, n, float(a)) for a, n, k in stats])


def _confusion(out: Path, gold: Sequence[Label], pred: Sequence[Label], plt) -> list[str]:
    from sklearn.metrics import classification_report, confusion_matrix

    g, p = [x.path[0] for x in gold], [x.path[0] if x.path else "" for x in pred]
    labels = sorted(set(g) | set(p))
    matrix = confusion_matrix(g, p, labels=labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(labels), 1 + 0.45 * len(labels)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted top level")
    ax.set_ylabel("gold top level")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)
    report = classification_report(g, p, labels=labels, zero_division=0)
    return ["## Top level: confusion matrix and classification report", "", "![confusion](confusion.png)", "",
            "```text", report.rstrip(), "```"]


def _training_curves(out: Path, history: list[dict], plt) -> list[str]:
    if not history:
        return ["## Training curves", "", "The checkpoint records no training history."]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(epochs, [h.get("train_loss") for h in history], "o-", label="train loss")
    if "val_loss" in history[0]:
        ax.plot(epochs, [h.get("val_loss") for h in history], "s-", label="validation loss")
    score = "item_accuracy" if "item_accuracy" in history[0] else "smape"
    twin = ax.twinx()
    twin.plot(epochs, [h.get(score) for h in history], "^-", color="tab:green", label=f"validation {score}")
    ax.set_xlabel("epoch")
    ax.legend(loc="upper left", fontsize=7)
    twin.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=110)
    plt.close(fig)
    return ["## Training curves", "", "![training](training.png)"]


def price_report(out: Path, frame: pd.DataFrame, metrics: dict, manifest: dict, categories: Sequence[str] | None) -> Path:
    """Write report.md and its PNGs for a price evaluation; returns the report's path."""
    plt = _plt()
    gold, pred = frame["price"].to_numpy(float), frame["predicted"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(gold, np.maximum(pred, 1e-3), ".", alpha=0.5, markersize=4)
    lo, hi = max(min(gold.min(), pred.min()), 1e-3), max(gold.max(), pred.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true price")
    ax.set_ylabel("predicted price")
    ax.set_title(f"SMAPE {metrics['smape']:.1f}")
    fig.tight_layout()
    fig.savefig(out / "price_scatter.png", dpi=110)
    plt.close(fig)
    lines = [f"# Price evaluation: {metrics['split']} split of {metrics['source']} ({metrics['items']} items)", "",
             f"SMAPE **{metrics['smape']:.2f}**, MAE {metrics['mae']:.2f}, R² (log1p) {metrics.get('r2_log1p', 0):.3f}.",
             "", "![predicted vs true](price_scatter.png)", "", "## SMAPE per price decile", ""]
    deciles = metrics.get("smape_by_decile") or {}
    lines += _table(["decile", "SMAPE"], list(deciles.items()) if isinstance(deciles, dict) else list(enumerate(deciles)))
    if categories is not None:
        by = pd.DataFrame({"category": list(categories), "smape": frame["smape"]}).groupby("category")["smape"]
        stats = by.agg(["count", "mean"]).sort_values("mean", ascending=False).head(10)
        lines += ["", "## The 10 worst top-level categories (SMAPE)", ""] + _table(
            ["category", "items", "SMAPE"], [(k, int(r["count"]), float(r["mean"])) for k, r in stats.iterrows()])
    lines += ["", *_training_curves(out, manifest.get("history") or [], plt)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
