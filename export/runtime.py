"""ONNX Runtime runners for the exported graphs.

The T5 runner is a *step factory* for the one decode loop (shelfml/decoding.py): the encoder runs
once, then each step binds the previous step's cache outputs as the next step's inputs. The cache
stays in ``OrtValue``s through I/O binding (never copied through numpy between steps); only the
logits come back to the host.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from shelfml.decoding import StepFn
from shelfml.export.contract import GraphSpec

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


class OrtT5:
    """Encoder + KV-cache decoder sessions; :meth:`make_step` plugs into the shared decode loop."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.device = "cuda" if "CUDAExecutionProvider" in decoder.get_providers() else "cpu"
        names = [i.name for i in decoder.get_inputs()]
        self.self_names = [n for n in names if n.endswith((".decoder.key", ".decoder.value"))]
        self.cross_names = [n for n in names if n.endswith((".encoder.key", ".encoder.value"))]
        self.present_names = [o.name for o in decoder.get_outputs()][1:]
        shape = decoder.get_inputs()[2].shape  # [batch, heads, past, d_kv]
        self.heads, self.d_kv = int(shape[1]), int(shape[3])

    @classmethod
    def load(cls, export_dir: Path, int8: bool = False, config: SessionConfig | None = None) -> "OrtT5":
        from shelfml.export.exporter import read_export

        manifest = read_export(export_dir, task="tagger")
        sessions = []
        for key in ("encoder", "decoder"):
            graph = manifest["graphs"][key]
            file = graph["int8"] if int8 else graph["file"]
            session = load_session(Path(export_dir) / file, None, config)
            _check_names(session, graph, Path(export_dir) / file)
            sessions.append(session)
        return cls(*sessions)

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def make_step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        """Run the encoder once; return the per-token step closure over OrtValue caches."""
        mask = self._value(attention_mask.astype(np.int64))
        enc = self.encoder.io_binding()
        enc.bind_ortvalue_input("input_ids", self._value(input_ids.astype(np.int64)))
        enc.bind_ortvalue_input("attention_mask", mask)
        for out in self.encoder.get_outputs():
            enc.bind_output(out.name, self.device)
        self.encoder.run_with_iobinding(enc)
        outputs = dict(zip([o.name for o in self.encoder.get_outputs()], enc.get_outputs()))
        cross = {n: outputs[n.replace("past_key_values", "present")] for n in self.cross_names}
        batch = input_ids.shape[0]
        empty = np.zeros((batch, self.heads, 0, self.d_kv), dtype=np.float32)
        past = {n: self._value(empty) for n in self.self_names}

        def step(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            binding = self.decoder.io_binding()
            binding.bind_ortvalue_input("input_ids", self._value(tokens.astype(np.int64)))
            binding.bind_ortvalue_input("encoder_attention_mask", mask)
            for name, value in (past | cross).items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("logits", "cpu")
            for name in self.present_names:
                binding.bind_output(name, self.device)
            self.decoder.run_with_iobinding(binding)
            values = binding.get_outputs()
            past = {n.replace("present", "past_key_values"): v for n, v in zip(self.present_names, values[1:])}
            return values[0].numpy()[:, -1]

        return step


class OrtPrice:
    """The price graph: feeds from the regressor's own batching (text ids, pictures, mask) -> prices."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, export_dir: Path, int8: bool = False, config: SessionConfig | None = None) -> "OrtPrice":
        from shelfml.export.exporter import read_export

        graph = read_export(export_dir, task="price")["graphs"]["model"]
        path = Path(export_dir) / (graph["int8"] if int8 else graph["file"])
        session = load_session(path, None, config)
        _check_names(session, graph, path)
        return cls(session)

    def __call__(self, batch: dict) -> np.ndarray:
        """Prices for one batch of :meth:`PriceRegressor.batch` (pictures only for rows that have one):
        the graph takes a dense picture slot per row plus the has-picture mask (and the neighbour features)."""
        feeds = {"input_ids": np.asarray(batch["input_ids"], dtype=np.int64),
                 "attention_mask": np.asarray(batch["attention_mask"], dtype=np.int64)}
        if "pixel_values" in self.inputs:
            has = np.asarray(batch["image_mask"], dtype=bool)
            size = self.session.get_inputs()[2].shape[-1]
            pixels = np.zeros((len(has), 3, size, size), dtype=np.float32)
            pixels[has] = np.asarray(batch["pixel_values"], dtype=np.float32)
            feeds |= {"pixel_values": pixels, "image_mask": has[:, None]}
        if "neighbour_features" in self.inputs:
            feeds["neighbour_features"] = np.asarray(batch["neighbour_features"], dtype=np.float32)
        return self.session.run(["price"], feeds)[0][:, 0].astype(np.float64)


def _check_names(session: ort.InferenceSession, graph: dict, path: Path) -> None:
    have = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    want = ([t["name"] for t in graph["inputs"]], [t["name"] for t in graph["outputs"]])
    if have != want:
        raise GraphError(f"{path} does not match {graph['name']} in export.json: inputs/outputs {have}, expected {want}")


class OrtEmbedder:
    """The exported retrieval embedder, usable wherever shelfml.retrieval expects an embedder
    (``describe()`` says which encoder weights it was exported from; the index checks that)."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], tokenizer, description: dict) -> None:
        self.run, self.tokenizer, self.description = run, tokenizer, description
        self.max_length, self.dimension = description["max_length"], description["dimension"]

    @classmethod
    def from_session(cls, session: ort.InferenceSession, tokenizer, description: dict) -> "OrtEmbedder":
        return cls(lambda feeds: session.run(["embedding"], feeds)[0], tokenizer, description)

    def describe(self) -> dict:
        return dict(self.description)

    def encode(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[start:start + batch_size]), max_length=self.max_length, truncation=True,
                                 padding=True, return_tensors="np")
            out[start:start + batch_size] = self.run({"input_ids": enc["input_ids"].astype(np.int64),
                                                      "attention_mask": enc["attention_mask"].astype(np.int64)})
        return out
