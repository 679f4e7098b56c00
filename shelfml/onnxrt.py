"""ONNX Runtime sessions for every stage: settings, loading with a contract check, clear errors.

Export, the served python models, benchmarks and evaluation open graphs through :func:`load_session`;
each model family's runners (``shelfml/<family>/runners.py``) build on it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import onnxruntime as ort

from shelfml.contract import GraphSpec

OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class GraphError(ValueError):
    """An ONNX file that cannot be loaded (missing, corrupt, or not the graph the contract says)."""


@dataclass
class SessionConfig:
    """The ONNX Runtime settings a runner uses; recorded in export.json and benchmark output."""

    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 1
    optimization: str = "all"
    sequential: bool = True  # one graph node at a time; the parallelism is inside the ops
    provider: str = "CPUExecutionProvider"

    @classmethod
    def from_env(cls) -> "SessionConfig":
        """Threads from OMP_NUM_THREADS when set (so one knob bounds torch and ORT alike)."""
        threads = os.environ.get("OMP_NUM_THREADS", "")
        return cls(intra_op_threads=int(threads) if threads.isdigit() else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def load_session(path: Path, spec: GraphSpec | None = None, config: SessionConfig | None = None) -> ort.InferenceSession:
    """An inference session, refusing a missing or corrupt file and one whose inputs/outputs differ from ``spec``."""
    config = config or SessionConfig.from_env()
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.graph_optimization_level = OPT_LEVELS[config.optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if config.sequential else ort.ExecutionMode.ORT_PARALLEL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=[config.provider])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise GraphError(f"{path} is not a loadable ONNX graph: {str(e).splitlines()[0][:300]}") from None
    if spec is not None:
        have = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        want = (spec.input_names, spec.output_names)
        if have != want:
            raise GraphError(f"{path} does not match the {spec.name} contract: inputs/outputs {have}, expected {want}")
    return session


def check_names(session: ort.InferenceSession, graph: dict, path: Path) -> None:
    have = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    want = ([t["name"] for t in graph["inputs"]], [t["name"] for t in graph["outputs"]])
    if have != want:
        raise GraphError(f"{path} does not match {graph['name']} in export.json: inputs/outputs {have}, expected {want}")
