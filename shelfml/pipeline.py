"""``shelfml pipeline``: every stage in order on one catalog, one ``report.json`` section per stage."""

from __future__ import annotations

import time
from pathlib import Path

from shelfml.checkpoint import ensure_writable, versions
from shelfml.data import DataSpec
from shelfml.evaluate import evaluate_price, evaluate_tagger, write_json


def run_pipeline(out: Path, spec: DataSpec, tagger_args, force: bool = False, price_args=None) -> dict:
    """data -> tagger training -> evaluation -> baseline, then the same for the price model when
    ``price_args`` is given; returns the report written to out/report.json."""
    from shelfml.training.baseline import baseline_tagger
    from shelfml.training.tagger import train_tagger

    ensure_writable(out, force)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"data": spec.__dict__, "versions": versions()}
    start = time.perf_counter()
    ckpt = out / "tagger"
    manifest = train_tagger(spec, ckpt, tagger_args, force=True)
    train_seconds = time.perf_counter() - start
    metrics = evaluate_tagger(ckpt, split="test", out=out / "tagger-eval")
    baseline = baseline_tagger(spec, split_seed=tagger_args.split_seed)
    write_json(out / "baseline-tagger.json", baseline)
    report["tagger"] = {
        "metrics": {k: v for k, v in metrics.items() if k != "paths"},
        "baseline": baseline,
        "train_seconds": round(train_seconds, 1),
        "epochs": len(manifest["history"]),
        "split": manifest["split"],
        "paths": {"checkpoint": str(ckpt), **metrics["paths"], "baseline": str(out / "baseline-tagger.json")},
    }
    write_json(out / "report.json", report)
    if price_args is not None:
        report["price"] = run_price(out, spec, price_args)
        write_json(out / "report.json", report)
    return report


def run_price(out: Path, spec: DataSpec, price_args) -> dict:
    """Price regressor vs the TF-IDF + ridge baseline on the same grouped split."""
    from shelfml.training.baseline import baseline_price
    from shelfml.training.price import train_price

    start = time.perf_counter()
    ckpt = out / "price"
    manifest = train_price(spec, ckpt, price_args, force=True)
    train_seconds = time.perf_counter() - start
    metrics = evaluate_price(ckpt, split="test", out=out / "price-eval")
    baseline = baseline_price(spec, split_seed=price_args.split_seed)
    write_json(out / "baseline-price.json", baseline)
    return {
        "metrics": {k: v for k, v in metrics.items() if k != "paths"},
        "baseline": baseline,
        "smape_gain_over_baseline": round(baseline["smape"] - metrics["smape"], 4),
        "model": {"encoder": manifest["encoder"], "loss": manifest["model"]["loss"],
                  "max_length": manifest["model"]["max_length"], "images": manifest["model"]["images"]},
        "train_seconds": round(train_seconds, 1),
        "epochs": len(manifest["history"]),
        "split": manifest["split"],
        "paths": {"checkpoint": str(ckpt), **metrics["paths"], "baseline": str(out / "baseline-price.json")},
    }
