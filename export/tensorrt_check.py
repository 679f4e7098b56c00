"""The export stage's static TensorRT readiness check of one ONNX graph, runnable without TensorRT:
the ONNX checker, operators against the TensorRT ONNX parser's support matrix, constant folding, and an
ONNX Runtime parity run of the original against the folded graph at the profile's min/opt/max shapes
(``shelfml engines --check FILE.onnx``; recorded in export.json for every graph).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from shelfml.contract import GraphSpec, ShapeRanges

GRAPH_FILE = "graph.json"  # a leaf's contract + shape ranges, beside its model.onnx in a repository

# ---------------------------------------------------------------------------------------------
# Operators the TensorRT ONNX parser supports (default domain): the "Y" rows of onnx-tensorrt's
# docs/operators.md (TensorRT 8.5 matrix, opset <= 17), plus LayerNormalization (parsed since TensorRT 8.6).
# Anything else, or any node of a non-default domain (a custom op), needs a plugin and is flagged.
TENSORRT_ONNX_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
LayerNormalization
""".split())
ONNX_DEFAULT_DOMAINS = ("", "ai.onnx")


def _all_nodes(graph) -> Iterable:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If / Loop / Scan bodies
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def unsupported_ops(model) -> dict[str, int]:
    """Ops the TensorRT ONNX parser cannot take without a plugin, with their counts ("domain::Op" for custom)."""
    bad = Counter()
    for node in _all_nodes(model.graph):
        if node.domain not in ONNX_DEFAULT_DOMAINS:
            bad[f"{node.domain}::{node.op_type}"] += 1
        elif node.op_type not in TENSORRT_ONNX_OPS:
            bad[node.op_type] += 1
    return dict(bad)


def fold_constants(model):
    """(folded model, tool name): polygraphy (with onnx-graphsurgeon) when installed, else ONNX Runtime's
    basic graph optimisations (constant folding, redundant node removal)."""
    try:
        import onnx_graphsurgeon  # noqa: F401  (polygraphy's folding needs it)
        from polygraphy.backend.onnx import fold_constants as polygraphy_fold
        from polygraphy.logger import G_LOGGER
    except ImportError:
        return _ort_fold(model), "onnxruntime (ORT_ENABLE_BASIC)"
    with G_LOGGER.verbosity(G_LOGGER.ERROR), contextlib.redirect_stdout(sys.stderr):  # keep stdout for reports
        return polygraphy_fold(model, copy=True, error_ok=False), "polygraphy"


def _ort_fold(model):
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def random_feeds(model, spec: GraphSpec, ranges: ShapeRanges, which: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the profile's min (0), opt (1) or max (2): ids below the embedding size they index, masks of ones."""
    rng = np.random.default_rng(seed + which)
    sizes = {init.name: init.dims[0] for init in model.graph.initializer if init.dims}
    feeds = {}
    for t in spec.inputs:
        shape = ranges.shape(t, which)
        if t.dtype == "bool":
            feeds[t.name] = rng.random(shape) < 0.5
        elif t.dtype.startswith("int"):
            if "mask" in t.name:
                feeds[t.name] = np.ones(shape, dtype=t.dtype)
            else:
                high = min([sizes[n.input[0]] for n in model.graph.node
                            if n.op_type == "Gather" and n.input[1] == t.name and n.input[0] in sizes] or [2])
                feeds[t.name] = rng.integers(0, high, shape, dtype=t.dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return feeds


def parity(original, folded, spec: GraphSpec, ranges: ShapeRanges) -> list[dict]:
    """ONNX Runtime: original against folded graph at min/opt/max; max |difference| per shape point."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, folded)]
    rows = []
    for which, label in enumerate(("min", "opt", "max")):
        feeds = random_feeds(original, spec, ranges, which)
        a, b = (dict(zip(spec.output_names, s.run(spec.output_names, feeds))) for s in sessions)
        diff = max((float(np.max(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)))) if a[n].size else 0.0)
                   for n in spec.output_names)
        rows.append({"shape": label, "inputs": {k: list(v.shape) for k, v in feeds.items()},
                     "max_abs_diff": diff, "ok": diff <= spec.atol})
    return rows


def check_onnx_for_tensorrt(onnx_path: Path, graph_json: Path | None = None) -> dict:
    """Static checks of one ONNX file for the TensorRT path; never raises on a bad model, reports it.

    Returns ``{"onnx", "ok", "errors", "checker", "opset", "op_counts", "unsupported_ops",
    "constant_folding", "parity"}``; ``graph_json`` (default: graph.json beside the file) gives the
    spec and shape ranges for the parity run, which is skipped (``parity: None``) without one.
    """
    import onnx

    onnx_path = Path(onnx_path)
    graph_json = Path(graph_json) if graph_json else onnx_path.with_name(GRAPH_FILE)
    report: dict = {"onnx": str(onnx_path), "ok": False, "errors": [], "checker": None, "opset": None,
                    "op_counts": {}, "unsupported_ops": {}, "constant_folding": None, "parity": None}
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # noqa: BLE001 (DecodeError, OSError, ...: the report says which)
        report["errors"].append(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__}: {exc})")
        return report
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)  # by path: works for external data too
        report["checker"] = "ok"
    except Exception as exc:  # noqa: BLE001 (ValidationError, InferenceError)
        report["checker"] = f"{type(exc).__name__}: {exc}"
        report["errors"].append(f"{onnx_path}: onnx.checker (full_check) failed: {exc}")
    report["opset"] = next((o.version for o in model.opset_import if o.domain in ONNX_DEFAULT_DOMAINS), None)
    report["op_counts"] = dict(sorted(Counter(n.op_type for n in _all_nodes(model.graph)).items()))
    report["unsupported_ops"] = unsupported_ops(model)
    if report["unsupported_ops"]:
        report["errors"].append(f"{onnx_path}: ops the TensorRT ONNX parser does not support: "
                                f"{report['unsupported_ops']} (need a plugin or a different export)")
    try:
        folded, tool = fold_constants(model)
        report["constant_folding"] = {"tool": tool, "nodes_before": len(model.graph.node),
                                      "nodes_after": len(folded.graph.node),
                                      "foldable_nodes": len(model.graph.node) - len(folded.graph.node)}
    except Exception as exc:  # noqa: BLE001
        report["errors"].append(f"{onnx_path}: constant folding failed: {type(exc).__name__}: {exc}")
        folded = None
    if folded is not None and graph_json.is_file():
        try:
            graph = json.loads(graph_json.read_text(encoding="utf-8"))
            spec, ranges = GraphSpec.from_dict(graph["spec"]), ShapeRanges.from_dict(graph["shape_ranges"])
            report["parity"] = parity(model, folded, spec, ranges)
            bad = [r for r in report["parity"] if not r["ok"]]
            if bad:
                report["errors"].append(f"{onnx_path}: folded graph differs from the original beyond atol "
                                        f"{spec.atol}: {bad}")
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"{onnx_path}: ONNX Runtime parity run failed: {type(exc).__name__}: {exc}")
    report["ok"] = not report["errors"]
    return report
