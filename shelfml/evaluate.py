"""Evaluate a checkpoint on a split of its data (or of any catalog): metrics JSON + predictions CSV."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shelfml.checkpoint import read_manifest, update_manifest
from shelfml.data import SPLITS, Catalog, DataSpec, load_catalog, split_catalog
from shelfml.eval_report import brand_split, coverage_curve, price_report, tagger_report
from shelfml.labels import format_target
from shelfml.metrics import same_brand, tagger_metrics


def evaluation_rows(manifest: dict, spec: DataSpec | None, split: str) -> tuple[Catalog, bool]:
    """The rows to score: the checkpoint's own split by default; returns (rows, same_data)."""
    rows, _, same = evaluation_data(manifest, spec, split)
    return rows, same


def evaluation_data(manifest: dict, spec: DataSpec | None,
                    split: str) -> tuple[Catalog, dict[str, Catalog] | None, bool]:
    """(the rows to score, every part of the split they come from (None for ``all``), same_data): the catalog is
    loaded once."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
    spec = spec or DataSpec.from_dict(manifest["data"]["spec"])
    catalog = load_catalog(spec, task=manifest["task"])
    same = catalog.fingerprint() == manifest["data"]["fingerprint"]
    if split == "all":
        return catalog, None, same
    parts = catalog_parts(manifest, catalog, same)
    return parts[split], parts, same


def catalog_parts(manifest: dict, catalog: Catalog, same: bool) -> dict[str, Catalog]:
    """The train/validation/test parts of ``catalog`` split as the checkpoint's own data was."""
    parts, info = split_catalog(catalog, seed=manifest["split"]["seed"], fractions=tuple(manifest["split"]["fractions"]))
    if same:
        assert info.test_fingerprint == manifest["split"]["test_fingerprint"], "split is not reproducible"
    return parts


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def _write_results(ckpt: Path, manifest: dict, metrics: dict, frame: pd.DataFrame, out: Path, record: bool,
                   report) -> dict:
    """Write predictions.csv, metrics.json and the report (``report(out)`` writes report.md and its PNGs);
    record test metrics in the manifest when they are the checkpoint's own."""
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "predictions.csv", index=False)
    report_path = report(out)
    metrics["paths"] = {"metrics": str(out / "metrics.json"), "predictions": str(out / "predictions.csv"),
                        "report": str(report_path)}
    write_json(out / "metrics.json", metrics)
    if record:
        update_manifest(ckpt, metrics={**manifest.get("metrics", {}), "test": metrics})
    return metrics


def evaluate_tagger(ckpt: Path, spec: DataSpec | None = None, split: str = "test", out: Path | None = None,
                    batch_size: int = 64, limit: int | None = None, brand_mode: str | None = None,
                    retrieval_index: Path | None = None, prior_weight: float | None = None,
                    prior_only: bool = False, top_k: int | None = None, baseline: bool = True) -> dict:
    """Per-level, path, brand and item accuracy (+ latency), the confidence (calibration, coverage and precision at
    the thresholds, back-off; beside the TF-IDF baseline's own unless ``baseline`` is False) and top-k path accuracy;
    ``prior_weight`` overrides the label prior's fitted weight (0: the T5 alone) and ``prior_only`` decodes with the
    prior alone: the ablations (not recorded)."""
    from shelfml.tagger.predict import TOP_K, Tagger, prior_only_step_factory

    manifest = read_manifest(ckpt, task="tagger")
    rows, parts, same_data = evaluation_data(manifest, spec, split)
    if limit:
        rows = rows.subset(range(min(limit, len(rows))))
    tagger = Tagger.load(ckpt, brand_mode=brand_mode, retrieval_index=retrieval_index)
    make_step = prior_only_step_factory(len(tagger.tokenizer)) if prior_only else None
    preds, seconds = tagger.timed_predict(rows.inputs(), batch_size=batch_size, progress=True, make_step=make_step,
                                          prior_weight=prior_weight, top_k=top_k or TOP_K)
    gold = rows.labels()
    metrics = tagger_metrics(gold, [p.label for p in preds], tagger.taxonomy)
    trained = set(parts["train"].frame["brand"]) if parts else set(tagger.taxonomy.brands)  # brands seen in training
    metrics["brand_split"] = brand_split(gold, [p.label for p in preds], rows.inputs(), trained)
    if tagger.prior is not None:
        metrics["prior_oracle"] = tagger.prior.oracle([tagger.tokenizer.clip(t, tagger.max_input_tokens)
                                                       for t in rows.inputs()], gold)
    ablation = prior_only or prior_weight is not None
    weight = prior_weight if prior_weight is not None else (tagger.prior.cfg.weight if tagger.prior else 0.0)
    metrics.update(split=split, source=rows.source, brand_mode=tagger.constraint.brand_mode,
                   decoding={"prior_weight": weight, "prior_only": prior_only},
                   latency={"backend": "eager-pytorch-cpu", "batch_size": batch_size, "seconds": round(seconds, 3),
                            "ms_per_item": round(1000 * seconds / len(rows), 3)})
    out = Path(out or Path(ckpt) / f"eval-{split}")
    frame = pd.DataFrame({
        "input": rows.inputs(),
        "gold": [format_target(g) for g in gold],
        "predicted": [format_target(p.label) for p in preds],
        "confidence": [float(f"{p.confidence:.6g}") for p in preds],
        "correct": [g.path == p.label.path and same_brand(g.brand, p.label.brand) for g, p in zip(gold, preds)],
    })
    metrics["coverage"] = coverage_curve(frame["confidence"].to_numpy(float), frame["correct"].to_numpy(bool))
    metrics["confidence"] = _confidence(tagger, rows, preds, parts if baseline else None)
    curves = {"tagger": metrics["confidence"].pop("rows")}  # per-row data: the report's curves, not metrics.json
    if "baseline" in metrics["confidence"]:
        curves["baseline"] = metrics["confidence"]["baseline"].pop("rows")
    frame["level_probability"] = [";".join(f"{p:.4g}" for p in row) for row in curves["tagger"]["probabilities"]]
    record = same_data and split == "test" and not limit and not ablation
    labels = [p.label for p in preds]
    return _write_results(ckpt, manifest, metrics, frame, out, record=record,
                          report=lambda o: tagger_report(o, frame, gold, labels, metrics, manifest, curves))


def _confidence(tagger, rows: Catalog, preds, parts: dict[str, Catalog] | None) -> dict:
    """The tagger's confidence metrics on the scored rows and its top-k path accuracy; with ``parts`` (the split the
    rows come from), the baseline's on the same rows (fitted on the training part, calibrated on the validation
    part)."""
    from shelfml.confidence import confidence_metrics, prefix_correct

    levels, gold = tagger.taxonomy.levels, rows.labels()
    raw = np.array([p.level_probs for p in preds], dtype=float)
    correct = prefix_correct(gold, [p.label for p in preds], len(levels))
    out = confidence_metrics(raw, correct, levels, [len(p.label.path) for p in preds], tagger.calibration)
    out.update(calibrated=tagger.calibration is not None,
               thresholds=tagger.calibration.thresholds if tagger.calibration else None,
               top_k=len(preds[0].alternatives),
               top_k_path_accuracy=float(np.mean([g.path in [a for a, _ in p.alternatives] for g, p in zip(gold, preds)])))
    if parts is not None:
        from shelfml.training.baseline import baseline_confidence

        target = tagger.calibration.target_precision if tagger.calibration else 0.95
        out["baseline"] = baseline_confidence(parts["train"], parts["validation"], rows, target)
    return out


def evaluate_price(ckpt: Path, spec: DataSpec | None = None, split: str = "test", out: Path | None = None,
                   batch_size: int = 64, limit: int | None = None, retrieval_index: Path | None = None) -> dict:
    """SMAPE (0-200), MAE, RMSE, R² and SMAPE per price decile; with an image branch, the picture
    counts and the same metrics on the rows that have a picture (``retrieval_index``: the index of a
    model trained with the neighbour feature, default the recorded path)."""
    from shelfml.images import describe_counts
    from shelfml.metrics import price_metrics
    from shelfml.price import PriceRegressor

    manifest = read_manifest(ckpt, task="price")
    rows, same_data = evaluation_rows(manifest, spec, split)
    if limit:
        rows = rows.subset(range(min(limit, len(rows))))
    regressor = PriceRegressor.load(ckpt, retrieval_index=retrieval_index)
    images = rows.frame["image"].tolist()
    start = time.perf_counter()  # the wide branch once: for the prediction (timed with it) and its ablation
    wide = None if regressor.wide is None else regressor.wide.predict(rows.inputs())
    pred, seconds = regressor.timed_predict(rows.inputs(), images, batch_size=batch_size, progress=True,
                                            wide_features=wide)
    seconds = time.perf_counter() - start
    gold = rows.frame["price"].to_numpy()
    metrics = price_metrics(gold, pred)
    status = [regressor.store.status(p) for p in images] if regressor.cfg.images else ["unused"] * len(rows)
    if regressor.cfg.images:
        counts = regressor.store.count(images)
        print(f"shelfml: {split} images: {describe_counts(counts)}", file=sys.stderr)
        with_image = np.array([s == "ok" for s in status])
        metrics["images"] = counts
        if with_image.any():
            metrics["with_image"] = {k: v for k, v in price_metrics(gold[with_image], pred[with_image]).items()
                                     if k != "smape_by_decile"}
    if wide is not None:  # the ablation: what the head adds to the wide branch it starts from
        from shelfml.price import from_log

        metrics["wide_branch_alone"] = {"smape": price_metrics(gold, from_log(wide))["smape"]}
    metrics.update(split=split, source=rows.source, skipped=rows.skipped or manifest["data"].get("skipped", {}),
                   latency={"backend": "eager-pytorch-cpu", "batch_size": batch_size, "seconds": round(seconds, 3),
                            "ms_per_item": round(1000 * seconds / len(rows), 3)})
    out = Path(out or Path(ckpt) / f"eval-{split}")
    denominator = np.abs(gold) + np.abs(pred)
    frame = pd.DataFrame({
        "input": rows.inputs(),
        "image": images,
        "image_status": status,
        "price": gold,
        "predicted": np.round(pred, 4),
        "abs_error": np.round(np.abs(pred - gold), 4),
        "smape": np.round(np.divide(200 * np.abs(pred - gold), denominator, out=np.zeros_like(gold),
                                    where=denominator > 0), 4),
    })
    top = rows.frame["level_1"].tolist() if "level_1" in rows.frame and rows.frame["level_1"].astype(bool).any() else None
    return _write_results(ckpt, manifest, metrics, frame, out, record=same_data and split == "test" and not limit,
                          report=lambda o: price_report(o, frame, metrics, manifest, top))
