"""``shelfml export CKPT --out DIR``: checkpoint -> ONNX graphs (FP32 + INT8), assets and export.json,
with parity against eager PyTorch measured on the checkpoint's own parity sample (or on the test split of
``--data``). One template for every model family; the family's hooks (``shelfml/<family>/export.py``)
load the model, export its graphs, wrap sessions as a runner and score parity.

The export directory's format is :mod:`shelfml.exports`. It is written into a temporary sibling and
renamed into place: a failed export (or a refused INT8 graph) leaves any previous export untouched.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shelfml.checkpoint import ensure_writable, read_manifest, sha256_file, write_checkpoint
from shelfml.contract import GraphSpec, ShapeRanges
from shelfml.data import DataSpec
from shelfml.export.onnx import OPSET
from shelfml.exports import ASSETS, EMBEDDER_ASSETS, EMBEDDER_DESCRIPTION, EXPORT_MANIFEST, ExportError, read_export
from shelfml.families import family
from shelfml.onnxrt import SessionConfig, load_session
from shelfml.parity import ParitySample, read_parity_sample
from shelfml.retrieval.embedder import EMBEDDER_SEQ, OrtEmbedder
from shelfml.retrieval.policy import CHECKPOINT_INDEX
from shelfml.text import load_tokenizer

PARITY_STEPS = 16  # greedy tokens compared step by step


@dataclass
class ExportArgs:
    int8: bool = True
    int8_max_drop: float = 2.0  # refuse INT8 losing more item-accuracy points (tagger) / adding more SMAPE points (price)
    parity_rows: int | None = 512  # test-split rows compared end to end (None: all)
    accept_parity_failure: bool = False  # export FP32 graphs outside the contract's tolerance (recorded)
    batch_size: int = 64
    opset: int = OPSET


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic INT8 quantisation of the MatMul weights (activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


def _progress(message: str) -> None:
    print(f"shelfml export: {message}", file=sys.stderr, flush=True)


def export_checkpoint(ckpt: Path, out: Path, args: ExportArgs | None = None, force: bool = False,
                      data: DataSpec | None = None) -> dict:
    """Export any family's checkpoint; returns the export manifest. Parity runs on the checkpoint's parity
    sample, or on the test split of ``data`` when given."""
    args = args or ExportArgs()
    manifest = read_manifest(ckpt)
    fam = family(manifest["task"])
    ensure_writable(out, force)
    result: dict = {}

    def save(tmp: Path) -> None:
        result.update(_export(Path(ckpt), manifest, tmp, args, fam, data))

    def describe(tmp: Path) -> dict:
        files = sorted(p.name for p in tmp.glob("*.onnx"))
        return {"task": manifest["task"], "checkpoint": Path(ckpt).name, "opset": args.opset,
                "data_fingerprint": manifest["data"]["fingerprint"], **result,
                "files": {name: sha256_file(tmp / name) for name in files}}

    write_checkpoint(out, save, describe, name=EXPORT_MANIFEST)
    _progress(f"wrote {out}")
    return read_export(out)


def parity_sample(ckpt: Path, manifest: dict, data: DataSpec | None) -> ParitySample:
    """The rows parity is scored on: the test split of ``data``, else the checkpoint's stored sample."""
    if data is None:
        return read_parity_sample(ckpt)
    from shelfml.evaluate import evaluation_rows

    rows, _ = evaluation_rows(manifest, data, "test")
    target = family(manifest["task"]).target
    return ParitySample.from_catalog(rows, target, source=f"{rows.source} (test split)")


def _export(ckpt: Path, manifest: dict, tmp: Path, args: ExportArgs, fam, data: DataSpec | None) -> dict:
    """The template: graphs -> assets -> runners -> parity -> INT8 check -> what export.json records."""
    hooks = fam.export_hooks()
    sample = parity_sample(ckpt, manifest, data).head(args.parity_rows)  # refuses before any work
    model = hooks.load(ckpt)
    _progress(f"exporting the {fam.task} model of {ckpt} (opset {args.opset})")
    specs = hooks.export_graphs(model, tmp, args.opset)
    _copy_assets(ckpt, tmp, fam.asset_dirs + (CHECKPOINT_INDEX,))
    retrieval = hooks.retrieval(model)
    embedder = _export_embedder(*retrieval, tmp, args) if retrieval is not None else {}
    if args.int8:
        _progress("quantising to INT8 (dynamic, MatMul weights)")
    graphs = _graphs(specs, tmp, args.int8)
    config = SessionConfig.from_env()
    runners = {"onnx-fp32": hooks.runner({k: load_session(tmp / s.file, s, config) for k, s in specs.items()})}
    if args.int8:
        runners["onnx-int8"] = hooks.runner({k: load_session(tmp / graphs[k]["int8"], s, config)
                                             for k, s in specs.items()})
    _progress(f"parity on {len(sample)} rows of {sample.source}")
    parity, int8_loss = hooks.parity(model, runners, sample, args.batch_size)
    check = _check_fp32(hooks.fp32_failures(parity["onnx-fp32"], specs), ckpt, args.accept_parity_failure)
    if args.int8:
        _check_int8(int8_loss, args.int8_max_drop, *hooks.int8_metric)
    ranges = hooks.ranges(model)
    if embedder:
        specs, ranges = _add_embedder(embedder, graphs, parity, specs, ranges)
    return {"graphs": graphs, "shape_ranges": ranges.to_dict(), "session": config.to_dict(), "parity": parity,
            "parity_check": check, "parity_sample": {"source": sample.source, "rows": len(sample)},
            "tensorrt_check": tensorrt_checks(specs, tmp, ranges), **hooks.extra(model)}


def _check_fp32(failures: list[str], ckpt: Path, accept: bool) -> dict:
    """ExportError (nothing written) when the FP32 graphs miss their contract's tolerance, unless ``accept``;
    what export.json records either way."""
    if failures and not accept:
        raise ExportError(f"{ckpt}: the FP32 ONNX graphs miss the contract's parity tolerance: {'; '.join(failures)}. "
                          "Nothing was written; pass --accept-parity-failure to export them anyway (recorded in "
                          "export.json)")
    if failures:
        _progress(f"FP32 parity outside tolerance, exported by --accept-parity-failure: {'; '.join(failures)}")
    return {"fp32_within_tolerance": not failures, "failures": failures, "accepted_by_override": bool(failures)}


def _copy_assets(ckpt: Path, tmp: Path, subdirs: tuple[str, ...] = ()) -> Path:
    """Tokenizer + manifest (no weights) + the named sub-folders (e.g. the retrieval index): what a runtime
    needs beside the graphs."""
    assets = tmp / ASSETS
    assets.mkdir()
    for path in Path(ckpt).iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "parity_sample.json":
            shutil.copy2(path, assets / path.name)
        elif path.is_dir() and path.name in subdirs:
            shutil.copytree(path, assets / path.name)
    return assets


def tensorrt_checks(specs: dict, tmp: Path, ranges) -> dict:
    """Static TensorRT readiness of each FP32 graph (checker, supported ops, constant folding, and an
    ONNX Runtime run of the folded graph at the min/opt/max shapes); recorded, never fatal here."""
    from shelfml.export.tensorrt_check import check_onnx_for_tensorrt

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


def _export_embedder(retriever, k: int, tmp: Path, args: ExportArgs) -> dict:
    """A model trained with retrieval: its query encoder as embedder.onnx (+ tokenizer in assets/embedder),
    compared with the sentence-transformers encoder on the ``k`` neighbours it finds."""
    from transformers import AutoTokenizer

    from shelfml.retrieval.onnx import export_embedder

    reference = retriever.embedder
    _progress(f"exporting the retrieval embedder {reference.describe()['name']}")
    spec = export_embedder(Path(reference.path), tmp, args.opset)["embedder"]
    tokenizer = AutoTokenizer.from_pretrained(reference.path, local_files_only=True)
    tokenizer.save_pretrained(tmp / ASSETS / EMBEDDER_ASSETS)
    (tmp / ASSETS / EMBEDDER_ASSETS / EMBEDDER_DESCRIPTION).write_text(json.dumps(reference.describe(), indent=2), encoding="utf-8")
    session = load_session(tmp / spec.file, spec)
    onnx_embedder = OrtEmbedder(lambda feeds: session.run(["embedding"], feeds)[0],
                                load_tokenizer(tmp / ASSETS / EMBEDDER_ASSETS), reference.describe())
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
