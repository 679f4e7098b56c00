"""``shelfml export CKPT --out DIR``: checkpoint -> ONNX graphs (FP32 + INT8), assets and export.json,
with parity against eager PyTorch measured on the checkpoint's own test split.

The export directory::

    export.json            opset, graph contracts, shape ranges, parity, INT8 deltas, versions, file hashes
    assets/                tokenizer + the checkpoint's shelfml.json (taxonomy, model config)
    encoder.onnx decoder.onnx encoder.int8.onnx decoder.int8.onnx     (tagger)
    model.onnx model.int8.onnx                                         (price)
    embedder.onnx  assets/embedder/    the retrieval query encoder (models trained with retrieval)

It is written into a temporary sibling and renamed into place: a failed export (or a refused INT8
graph) leaves any previous export untouched.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shelfml.checkpoint import ensure_writable, read_json_manifest, read_manifest, sha256_file, write_checkpoint
from shelfml.export.contract import EMBEDDER_SEQ, GraphSpec, ShapeRanges, price_ranges, tagger_ranges
from shelfml.export.onnx import OPSET, export_price, export_t5
from shelfml.export.runtime import OrtPrice, OrtT5, SessionConfig, load_session

EXPORT_MANIFEST = "export.json"
ASSETS = "assets"
EMBEDDER_ASSETS = "embedder"  # the retrieval embedder's tokenizer, inside assets/
EMBEDDER_DESCRIPTION = "encoder.json"  # ...and which encoder weights it was exported from (the index checks it)
PARITY_STEPS = 16  # greedy tokens compared step by step


class ExportError(ValueError):
    """An export that cannot be made or was refused (e.g. INT8 losing too much accuracy)."""


@dataclass
class ExportArgs:
    int8: bool = True
    int8_max_drop: float = 2.0  # refuse INT8 losing more item-accuracy points (tagger) / adding more SMAPE points (price)
    parity_rows: int | None = 512  # test-split rows compared end to end (None: all)
    batch_size: int = 64
    opset: int = OPSET


def read_export(export_dir: Path, task: str | None = None) -> dict:
    """export.json of an export directory; ExportError naming the problem otherwise."""
    manifest = read_json_manifest(Path(export_dir) / EXPORT_MANIFEST, ExportError, "a shelfml export")
    if task and manifest.get("task") != task:
        raise ExportError(f"{export_dir} holds a {manifest.get('task')} export, not a {task} export")
    return manifest


def verify_files(export_dir: Path) -> None:
    """Refuse an export whose graph files changed since export (hash mismatch = corrupt or replaced)."""
    manifest = read_export(export_dir)
    for name, digest in manifest["files"].items():
        path = Path(export_dir) / name
        if not path.is_file():
            raise ExportError(f"{path} is missing from the export")
        if sha256_file(path) != digest:
            raise ExportError(f"{path} does not match the sha256 in {EXPORT_MANIFEST}: corrupt or replaced")


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic INT8 quantisation of the MatMul weights (activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


def _progress(message: str) -> None:
    print(f"shelfml export: {message}", file=sys.stderr, flush=True)


def export_checkpoint(ckpt: Path, out: Path, args: ExportArgs | None = None, force: bool = False) -> dict:
    """Export a tagger or price checkpoint; returns the export manifest."""
    args = args or ExportArgs()
    manifest = read_manifest(ckpt)
    ensure_writable(out, force)
    export = _export_tagger if manifest["task"] == "tagger" else _export_price
    result: dict = {}

    def save(tmp: Path) -> None:
        result.update(export(Path(ckpt), manifest, tmp, args))

    def describe(tmp: Path) -> dict:
        files = sorted(p.name for p in tmp.glob("*.onnx"))
        return {"task": manifest["task"], "checkpoint": str(Path(ckpt).resolve()), "opset": args.opset,
                "data_fingerprint": manifest["data"]["fingerprint"], **result,
                "files": {name: sha256_file(tmp / name) for name in files}}

    write_checkpoint(out, save, describe, name=EXPORT_MANIFEST)
    _progress(f"wrote {out}")
    return read_export(out)


def _copy_assets(ckpt: Path, tmp: Path, subdirs: tuple[str, ...] = ()) -> Path:
    """Tokenizer + manifest (no weights): what a runtime needs beside the graphs."""
    assets = tmp / ASSETS
    assets.mkdir()
    for path in Path(ckpt).iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, assets / path.name)
        elif path.is_dir() and path.name in subdirs:
            shutil.copytree(path, assets / path.name)
    return assets


def tensorrt_checks(specs: dict, tmp: Path, ranges) -> dict:
    """Static TensorRT readiness of each FP32 graph (checker, supported ops, constant folding, and an
    ONNX Runtime run of the folded graph at the min/opt/max shapes); recorded, never fatal here."""
    from shelfml.export.tensorrt import check_onnx_for_tensorrt

    out = {}
    for key, spec in specs.items():
        graph_json = tmp / f".{key}.graph.json"
        graph_json.write_text(json.dumps({"spec": spec.to_dict(), "shape_ranges": ranges.to_dict()}), encoding="utf-8")
        report = check_onnx_for_tensorrt(tmp / spec.file, graph_json)
        graph_json.unlink()
        out[key] = {k: report[k] for k in ("ok", "errors", "checker", "opset", "unsupported_ops", "constant_folding",
                                            "parity")}
        if not report["ok"]:
            _progress(f"TensorRT static check of {spec.file} found problems: {report['errors']}")
    return out


def _graphs(specs: dict, tmp: Path, int8: bool) -> dict:
    graphs = {}
    for key, spec in specs.items():
        graphs[key] = spec.to_dict()
        if int8:
            graphs[key]["int8"] = spec.file.replace(".onnx", ".int8.onnx")
            quantize_int8(tmp / spec.file, tmp / graphs[key]["int8"])
    return graphs


# ---------------------------------------------------------------------------------------------
# Tagger


def _export_tagger(ckpt: Path, manifest: dict, tmp: Path, args: ExportArgs) -> dict:
    from shelfml.evaluate import evaluation_rows
    from shelfml.metrics import tagger_metrics
    from shelfml.tagger import Tagger, eager_step_factory

    tagger = Tagger.load(ckpt)
    _progress(f"exporting the T5 encoder and KV-cache decoder of {ckpt} (opset {args.opset})")
    specs = export_t5(tagger.model, tmp, args.opset)
    _copy_assets(ckpt, tmp)
    embedder = {}
    if tagger.enricher is not None:
        embedder = _export_embedder(tagger.enricher.retriever, tagger.enricher.format.k, tmp, args)
    if args.int8:
        _progress("quantising to INT8 (dynamic, MatMul weights)")
    graphs = _graphs(specs, tmp, args.int8)
    config = SessionConfig.from_env()
    runners = {"onnx-fp32": OrtT5(*(load_session(tmp / specs[k].file, specs[k], config) for k in specs))}
    if args.int8:
        runners["onnx-int8"] = OrtT5(*(load_session(tmp / graphs[k]["int8"], specs[k], config) for k in specs))

    rows, _ = evaluation_rows(manifest, None, "test")
    if args.parity_rows:
        rows = rows.subset(range(min(args.parity_rows, len(rows))))
    texts, gold = rows.inputs(), rows.labels()
    _progress(f"parity on {len(texts)} test rows")
    parity: dict = {}
    eager = tagger.predict(texts, args.batch_size)
    scores = {"eager": tagger_metrics(gold, [p.label for p in eager], tagger.taxonomy)["item_accuracy"]}
    for name, runner in runners.items():
        logits = step_parity(eager_step_factory(tagger.model), runner.make_step, *tagger.encode(texts[:16]))
        preds = tagger.predict(texts, args.batch_size, make_step=runner.make_step)
        scores[name] = tagger_metrics(gold, [p.label for p in preds], tagger.taxonomy)["item_accuracy"]
        parity[name] = {**logits, "rows": len(texts),
                        "constrained_agreement": float(np.mean([a.label == b.label for a, b in zip(eager, preds)])),
                        "item_accuracy": round(scores[name], 6),
                        "item_accuracy_delta_points": round(100 * (scores[name] - scores["eager"]), 3)}
    parity["eager"] = {"item_accuracy": round(scores["eager"], 6)}
    if args.int8:
        _check_int8(-parity["onnx-int8"]["item_accuracy_delta_points"], args.int8_max_drop, "item accuracy",
                    "points lost")
    ranges = tagger_ranges(tagger.max_input_tokens, tagger.max_new_tokens)
    if embedder:
        specs, ranges = _add_embedder(embedder, graphs, parity, specs, ranges)
    return {"graphs": graphs, "shape_ranges": ranges.to_dict(), "session": config.to_dict(), "parity": parity,
            "tensorrt_check": tensorrt_checks(specs, tmp, ranges),
            "decode": {"max_input_tokens": tagger.max_input_tokens, "max_new_tokens": tagger.max_new_tokens,
                       "brand_mode": tagger.constraint.brand_mode}}


def _export_embedder(retriever, k: int, tmp: Path, args: ExportArgs) -> dict:
    """A model trained with retrieval: its query encoder as embedder.onnx (+ tokenizer in assets/embedder),
    compared with the sentence-transformers encoder on the ``k`` neighbours it finds."""
    from transformers import AutoTokenizer

    from shelfml.export.onnx import export_embedder
    from shelfml.export.runtime import OrtEmbedder

    reference = retriever.embedder
    _progress(f"exporting the retrieval embedder {reference.describe()['name']}")
    spec = export_embedder(Path(reference.path), tmp, args.opset)["embedder"]
    tokenizer = AutoTokenizer.from_pretrained(reference.path, local_files_only=True)
    tokenizer.save_pretrained(tmp / ASSETS / EMBEDDER_ASSETS)
    (tmp / ASSETS / EMBEDDER_ASSETS / EMBEDDER_DESCRIPTION).write_text(json.dumps(reference.describe(), indent=2), encoding="utf-8")
    onnx_embedder = OrtEmbedder.from_session(load_session(tmp / spec.file, spec), tokenizer, reference.describe())
    texts = [str(t) for t in retriever.metadata["input"].head(64)]
    a, b = reference.encode(texts), onnx_embedder.encode(texts)
    same = [[n.row for n in x] == [n.row for n in y]
            for x, y in zip(retriever.search_vectors(a, k), retriever.search_vectors(b, k))]
    parity = {"rows": len(texts), "max_abs_diff": float(np.abs(a - b).max()),
              "min_cosine": float((a * b).sum(1).min()), "neighbours_identical": float(np.mean(same))}
    graph = {**spec.to_dict(), "tokenizer": f"{ASSETS}/{EMBEDDER_ASSETS}", "encoder": reference.describe()}
    return {"graph": graph, "parity": parity, "max_length": reference.max_length}


def _add_embedder(embedder: dict, graphs: dict, parity: dict, specs: dict, ranges: ShapeRanges
                  ) -> tuple[dict, ShapeRanges]:
    """Record the exported embedder beside the model's graphs (its own sequence axis: its max_length)."""
    graphs["embedder"], parity["embedder"] = embedder["graph"], embedder["parity"]
    length = embedder["max_length"]
    return ({**specs, "embedder": GraphSpec.from_dict(embedder["graph"])},
            ShapeRanges({**ranges.ranges, EMBEDDER_SEQ: (1, length, length)}))


@torch.inference_mode()
def step_parity(reference, candidate, input_ids: np.ndarray, attention_mask: np.ndarray,
                steps: int = PARITY_STEPS) -> dict:
    """Two step factories run side by side on one (padded) batch: the largest logit difference when both
    are fed the reference's greedy tokens, and whether their own greedy tokens stay identical."""
    ref, cand = reference(input_ids, attention_mask), candidate(input_ids, attention_mask)
    ref_own, cand_own = reference(input_ids, attention_mask), candidate(input_ids, attention_mask)
    tokens = np.zeros((len(input_ids), 1), dtype=np.int64)
    mine, theirs = tokens.copy(), tokens.copy()
    max_diff, identical = 0.0, True
    for _ in range(steps):
        a, b = ref(tokens), cand(tokens)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        tokens = a.argmax(-1)[:, None].astype(np.int64)
        mine = ref_own(mine).argmax(-1)[:, None].astype(np.int64)
        theirs = cand_own(theirs).argmax(-1)[:, None].astype(np.int64)
        identical &= bool((mine == theirs).all())
    return {"max_abs_logit_diff": max_diff, "greedy_tokens_identical": identical, "greedy_steps": steps,
            "padded_batch": bool((attention_mask == 0).any())}


def _check_int8(loss: float, limit: float, metric: str, unit: str) -> None:
    """Refuse an INT8 graph that is worse than FP32 by more than ``limit`` (the export is abandoned)."""
    if loss > limit:
        raise ExportError(f"INT8 is worse on {metric} by {loss:.2f} {unit} (limit {limit:.2f}); nothing was "
                          "written. Pass --int8-max-drop to accept it, or --no-int8 to export FP32 only")


# ---------------------------------------------------------------------------------------------
# Price


def _export_price(ckpt: Path, manifest: dict, tmp: Path, args: ExportArgs) -> dict:
    from shelfml.evaluate import evaluation_rows
    from shelfml.metrics import smape
    from shelfml.price import ENCODER_DIR, PriceRegressor

    regressor = PriceRegressor.load(ckpt)
    _progress(f"exporting the price regressor of {ckpt} (opset {args.opset})")
    specs = export_price(regressor.model, tmp, args.opset)
    _copy_assets(ckpt, tmp, subdirs=(ENCODER_DIR, "vision"))
    retriever = regressor.retriever
    embedder = _export_embedder(retriever, regressor.cfg.neighbours, tmp, args) if retriever is not None else {}
    if args.int8:
        _progress("quantising to INT8 (dynamic, MatMul weights)")
    graphs = _graphs(specs, tmp, args.int8)
    config = SessionConfig.from_env()
    spec = specs["model"]
    runners = {"onnx-fp32": OrtPrice(load_session(tmp / spec.file, spec, config))}
    if args.int8:
        runners["onnx-int8"] = OrtPrice(load_session(tmp / graphs["model"]["int8"], spec, config))

    rows, _ = evaluation_rows(manifest, None, "test")
    if args.parity_rows:
        rows = rows.subset(range(min(args.parity_rows, len(rows))))
    texts, images, gold = rows.inputs(), rows.frame["image"].tolist(), rows.frame["price"].to_numpy()
    _progress(f"parity on {len(texts)} test rows")
    neighbours = regressor.neighbour_features(texts) if retriever is not None else None
    eager = regressor.predict(texts, images, args.batch_size, neighbour_features=neighbours)
    parity: dict = {"eager": {"smape": round(smape(gold, eager), 4)}}
    for name, runner in runners.items():
        pred = regressor.predict(texts, images, args.batch_size, run=runner, neighbour_features=neighbours)
        rel = np.abs(pred - eager) / np.maximum(np.abs(eager), 1e-6)
        parity[name] = {"rows": len(texts), "max_abs_price_diff": float(np.abs(pred - eager).max()),
                        "max_rel_price_diff": float(rel.max()), "median_rel_price_diff": float(np.median(rel)),
                        "smape": round(smape(gold, pred), 4),
                        "smape_delta_points": round(smape(gold, pred) - smape(gold, eager), 4),
                        "smape_vs_eager": round(smape(eager, pred), 4)}
    if args.int8:
        _check_int8(parity["onnx-int8"]["smape_delta_points"], args.int8_max_drop, "SMAPE", "points added")
    ranges = price_ranges(regressor.cfg.max_length)
    if embedder:
        specs, ranges = _add_embedder(embedder, graphs, parity, specs, ranges)
    return {"graphs": graphs, "shape_ranges": ranges.to_dict(), "session": config.to_dict(), "parity": parity,
            "tensorrt_check": tensorrt_checks(specs, tmp, ranges),
            "model": regressor.cfg.to_dict()}
