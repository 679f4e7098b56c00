"""``shelfml pipeline``: every stage in order on one catalog, one ``report.json`` section per stage."""

from __future__ import annotations

import time
from pathlib import Path

from shelfml.checkpoint import ensure_writable, versions
from shelfml.data import DataSpec
from shelfml.evaluate import evaluate_price, evaluate_tagger, write_json


def run_pipeline(out: Path, spec: DataSpec, tagger_args, force: bool = False, price_args=None,
                 serve: bool = True) -> dict:
    """data -> tagger training -> evaluation -> baseline, then the same for the price model when
    ``price_args`` is given, then (``serve``) export -> Triton repository -> server -> gRPC client on
    the test split; returns the report written to out/report.json."""
    from shelfml.training.baseline import baseline_tagger
    from shelfml.training.tagger import train_tagger

    ensure_writable(out, force)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"data": spec.__dict__, "versions": versions()}
    report["tagger"], _ = _train_and_compare(
        out, "tagger", lambda ckpt: train_tagger(spec, ckpt, tagger_args, force=True), evaluate_tagger,
        lambda: baseline_tagger(spec, split_seed=tagger_args.split_seed))
    write_json(out / "report.json", report)
    if price_args is not None:
        report["price"] = run_price(out, spec, price_args)
        write_json(out / "report.json", report)
    if serve:
        report["serving"] = run_serving(out, with_price=price_args is not None)
        write_json(out / "report.json", report)
    return report


def run_price(out: Path, spec: DataSpec, price_args) -> dict:
    """Price regressor vs the TF-IDF + ridge baseline on the same grouped split."""
    from shelfml.training.baseline import baseline_price
    from shelfml.training.price import train_price

    section, manifest = _train_and_compare(
        out, "price", lambda ckpt: train_price(spec, ckpt, price_args, force=True), evaluate_price,
        lambda: baseline_price(spec, split_seed=price_args.split_seed))
    return {**section, "smape_gain_over_baseline": round(section["baseline"]["smape"] - section["metrics"]["smape"], 4),
            "model": {"encoder": manifest["encoder"], "loss": manifest["model"]["loss"],
                      "max_length": manifest["model"]["max_length"], "images": manifest["model"]["images"]}}


def _train_and_compare(out: Path, task: str, train, evaluate, baseline) -> tuple[dict, dict]:
    """Train ``out/task``, evaluate it on its test split, run the baseline on the same split: (report section,
    checkpoint manifest)."""
    start = time.perf_counter()
    ckpt = out / task
    manifest = train(ckpt)
    train_seconds = time.perf_counter() - start
    metrics = evaluate(ckpt, split="test", out=out / f"{task}-eval")
    scores = baseline()
    write_json(out / f"baseline-{task}.json", scores)
    return {
        "metrics": {k: v for k, v in metrics.items() if k != "paths"},
        "baseline": scores,
        "train_seconds": round(train_seconds, 1),
        "epochs": len(manifest["history"]),
        "split": manifest["split"],
        "paths": {"checkpoint": str(ckpt), **metrics["paths"], "baseline": str(out / f"baseline-{task}.json")},
    }, manifest


def run_serving(out: Path, with_price: bool = True) -> dict:
    """Export both checkpoints, build the repository, serve it with the real tritonserver, and tag and
    price the test split through the gRPC client; served outputs are compared with the eager ones."""
    import numpy as np
    import pandas as pd

    from shelfml.client.client import ShelfmlClient
    from shelfml.export.exporter import export_checkpoint
    from shelfml.labels import Label, format_target, parse_target
    from shelfml.metrics import smape, tagger_metrics
    from shelfml.model_repository.build import build_repository
    from shelfml.model_repository.server import TritonServer
    from shelfml.tagger import Tagger

    section: dict = {"exports": {}}
    exports = {"tagger": out / "tagger-export"} | ({"price": out / "price-export"} if with_price else {})
    for task, path in exports.items():
        manifest = export_checkpoint(out / task, path, force=True)
        section["exports"][task] = {"path": str(path), "parity": manifest["parity"]}
    repo = out / "repository"
    build_repository(repo, **exports, force=True)
    section["repository"] = str(repo)
    tagged = pd.read_csv(out / "tagger-eval" / "predictions.csv", keep_default_na=False, index_col=False)
    start = time.perf_counter()
    with TritonServer(repo, log_file=out / "triton.log") as server, ShelfmlClient(server.grpc_url) as client:
        section["server"] = {"endpoints": server.endpoints, "start_seconds": round(time.perf_counter() - start, 1)}
        start = time.perf_counter()
        tags = client.tag(tagged["input"].tolist())
        seconds = time.perf_counter() - start
        served = [Label(tuple(t.path), t.brand) for t in tags]
        taxonomy = Tagger.load(out / "tagger", weights=False).taxonomy
        gold = [parse_target(g) for g in tagged["gold"]]
        section["tagger"] = {
            "rows": len(served),
            "agreement_with_eager": float(np.mean([format_target(s) == p for s, p in zip(served, tagged["predicted"])])),
            "metrics": tagger_metrics(gold, served, taxonomy),
            "seconds": round(seconds, 2), "ms_per_item": round(1000 * seconds / len(served), 2)}
        if with_price:
            priced = pd.read_csv(out / "price-eval" / "predictions.csv", keep_default_na=False, index_col=False)
            images = [p if p and Path(p).is_file() else None for p in priced["image"]]
            start = time.perf_counter()
            prices = np.array([r.price for r in client.price(priced["input"].tolist(), images)])
            seconds = time.perf_counter() - start
            eager = priced["predicted"].to_numpy(dtype=float)
            section["price"] = {
                "rows": len(prices), "smape": round(smape(priced["price"].to_numpy(dtype=float), prices), 4),
                "smape_vs_eager": round(smape(eager, prices), 4),
                "max_rel_diff_vs_eager": float(np.max(np.abs(prices - eager) / np.maximum(eager, 1e-6))),
                "seconds": round(seconds, 2), "ms_per_item": round(1000 * seconds / len(prices), 2)}
            rows = client.catalog(tagged["input"].tolist())  # both models in one call (the tags come from its cache)
            section["catalog"] = {"rows": len(rows), "agreement_with_tagger": float(np.mean(
                [(r.tag.path, r.tag.brand) == (t.path, t.brand) for r, t in zip(rows, tags)])),
                "versions": sorted({(r.tag.model_version, r.price.model_version) for r in rows})}
    return section
