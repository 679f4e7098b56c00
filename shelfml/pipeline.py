"""``shelfml pipeline``: every stage in order on one catalog, one ``report.json`` section per stage."""

from __future__ import annotations

import time
from pathlib import Path

from shelfml.checkpoint import ensure_writable, versions
from shelfml.data import DataSpec
from shelfml.evaluate import evaluate_tagger, write_json


def run_pipeline(out: Path, spec: DataSpec, tagger_args, force: bool = False) -> dict:
    """data -> tagger training -> evaluation -> baseline; returns the report written to out/report.json."""
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
    return report
