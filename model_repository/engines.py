"""ONNX -> FP16 TensorRT engines for the Triton repository's leaf models, with an engine cache: the
repository stage's GPU step (``shelfml engines REPO --cache DIR``, run by the server image's entrypoint).

A leaf model's version folder ``REPO/<model>/1/`` holds ``model.onnx`` and ``graph.json``
(``{"spec": GraphSpec.to_dict(), "shape_ranges": ShapeRanges.to_dict(), "precision": {"keep_fp32": [regex]}}``).
:func:`ensure_engine` writes ``model.plan`` beside them, and a sidecar ``model.plan.json`` holding the
*engine key* it was built for: GPU name, compute capability, TensorRT version, the ONNX file's sha256,
the optimisation profile, the precision settings and the builder settings. An engine is reused only when
that key matches and the plan deserialises; anything else is rebuilt (and the stale plan removed first),
never loaded. Built engines are also kept in a cache folder keyed by the key's digest, so a fresh copy of
the repository on the same GPU reuses them without building again.

:func:`decide` is the whole build / reuse / rebuild / refuse decision as a pure function;
:class:`TensorRTBackend` is the only code that touches ``tensorrt`` (imported lazily: it comes with the
``gpu`` extra). The static check that runs anywhere is :mod:`shelfml.export.tensorrt_check`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence


from shelfml.checkpoint import sha256_file
from shelfml.contract import GraphSpec, ShapeRanges
from shelfml.price.contract import BERT_KEEP_FP32
from shelfml.tagger.contract import T5_KEEP_FP32

ONNX_FILE, GRAPH_FILE, PLAN_FILE, SIDECAR_FILE = "model.onnx", "graph.json", "model.plan", "model.plan.json"
KEY_FORMAT = 1  # bump when the key's fields change: every cached engine is then rebuilt once

# ---------------------------------------------------------------------------------------------
# Precision: layers kept in FP32 inside an FP16 engine, as regexes searched in layer (= ONNX node) names.
# T5 overflows FP16 in the FFN output projection and its RMS layer norm (pow -> mean -> rsqrt), and
# softmax loses the most in FP16; names are those of torch.onnx.export (dynamo=False) of the HF modules,
# e.g. /encoder/block.0/layer.1/DenseReluDense/wo/MatMul, /layer_norm_1/Pow, /final_layer_norm/Sqrt, /Softmax_2.
DEFAULT_KEEP_FP32: dict[str, tuple[str, ...]] = {
    "tagger_encoder": T5_KEEP_FP32,
    "tagger_decoder": T5_KEEP_FP32,
    "price_regressor": BERT_KEEP_FP32,
    "embedder": BERT_KEEP_FP32,
}  # for a graph.json without keep_fp32 (the contracts carry their own: GraphSpec.keep_fp32)

@dataclass(frozen=True)
class BuildSettings:
    """Engine knobs, one table for every engine (part of the engine key)."""

    fp16: bool = True
    workspace_gib: float = 4.0  # builder scratch memory limit
    optimization_level: int = 3  # TensorRT's default (0..5)

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def to_dict(self) -> dict:
        return {"fp16": self.fp16, "workspace_bytes": self.workspace_bytes, "optimization_level": self.optimization_level}


class EngineError(RuntimeError):
    """A leaf model that cannot be turned into an engine (bad graph.json, parser or build failure)."""


class TensorRTUnavailable(EngineError):
    """``tensorrt`` is not importable, or no CUDA GPU is visible."""


class EngineRefused(EngineError):
    """The decision was to refuse: no engine is built and none may be loaded."""


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` naming the extra that provides it."""
    try:
        import tensorrt
    except ImportError as exc:  # ModuleNotFoundError, or a wheel whose CUDA libraries are missing
        raise TensorRTUnavailable(
            f"TensorRT engines need the `tensorrt` Python package ({exc}); install the gpu extra "
            "(pip install 'shelfml[gpu]', with a tensorrt version matching the Triton server) on a machine "
            "with an NVIDIA GPU") from exc
    return tensorrt


# ---------------------------------------------------------------------------------------------
# Leaf models: graph.json -> spec, ranges and precision.

@dataclass(frozen=True)
class LeafModel:
    name: str
    version_dir: Path
    spec: GraphSpec
    ranges: ShapeRanges
    keep_fp32: tuple[str, ...]

    @property
    def onnx_path(self) -> Path:
        return self.version_dir / ONNX_FILE

    @property
    def plan_path(self) -> Path:
        return self.version_dir / PLAN_FILE


def load_leaf(version_dir: Path) -> LeafModel:
    """Read ``graph.json`` of a leaf model version folder; errors name the file and what was expected."""
    version_dir = Path(version_dir)
    graph_path = version_dir / GRAPH_FILE
    try:
        graph = json.loads(graph_path.read_text(encoding="utf-8"))
        spec = GraphSpec.from_dict(graph["spec"])
        ranges = ShapeRanges.from_dict(graph["shape_ranges"])
    except FileNotFoundError:
        raise EngineError(f"{graph_path}: not found; a leaf model folder needs graph.json beside {ONNX_FILE}") from None
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise EngineError(f"{graph_path}: expected {{'spec': GraphSpec, 'shape_ranges': {{axis: [min, opt, max]}}, "
                          f"'precision': {{'keep_fp32': [regex]}}}}; got an error: {exc!r}") from None
    precision = graph.get("precision") or {}
    keep = precision.get("keep_fp32")
    keep = tuple(keep) if keep is not None else (spec.keep_fp32 or DEFAULT_KEEP_FP32.get(spec.name, ()))
    for pattern in keep:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise EngineError(f"{graph_path}: keep_fp32 pattern {pattern!r} is not a regex: {exc}") from None
    if not (version_dir / ONNX_FILE).is_file():
        raise EngineError(f"{version_dir / ONNX_FILE}: not found (graph.json describes {spec.name!r})")
    return LeafModel(spec.name, version_dir, spec, ranges, keep)


def profile_shapes(spec: GraphSpec, ranges: ShapeRanges) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Every input's (min, opt, max) shape: one TensorRT optimisation profile."""
    missing = sorted({d for t in spec.inputs for d in t.dims if isinstance(d, str)} - set(ranges.ranges))
    if missing:
        raise EngineError(f"{spec.name}: shape_ranges has no (min, opt, max) for axes {missing}; "
                          f"it has {sorted(ranges.ranges)}")
    return {t.name: tuple(ranges.shape(t, which) for which in range(3)) for t in spec.inputs}


def matching_names(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names (TensorRT layer names, which the ONNX parser takes from node names) any pattern finds."""
    compiled = [re.compile(p) for p in patterns]
    return [n for n in names if any(c.search(n) for c in compiled)]


# ---------------------------------------------------------------------------------------------
# The engine key and the decision.

@dataclass(frozen=True)
class DeviceInfo:
    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str


def engine_key(device: DeviceInfo, onnx_sha256: str, profile: dict, keep_fp32: Sequence[str],
               settings: BuildSettings) -> dict:
    """Everything an engine depends on; two engines with equal keys are interchangeable."""
    return {
        "format": KEY_FORMAT,
        "gpu_name": device.gpu_name,
        "compute_capability": device.compute_capability,
        "tensorrt_version": device.tensorrt_version,
        "onnx_sha256": onnx_sha256,
        "profile": {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())},
        "precision": {"fp16": settings.fp16, "keep_fp32": list(keep_fp32), "obey_precision_constraints": True},
        "builder": settings.to_dict(),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# Fields compared in this order; the first words of a rebuild reason name them.
_KEY_FIELDS = {"format": "key format", "gpu_name": "GPU", "compute_capability": "compute capability",
               "tensorrt_version": "TensorRT version", "onnx_sha256": "ONNX file (sha256)",
               "profile": "optimisation profile", "precision": "precision settings", "builder": "builder settings"}


class Action(str, enum.Enum):
    BUILD = "build"
    REUSE = "reuse"
    REBUILD = "rebuild"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


@dataclass(frozen=True)
class PlanState:
    """What is on disk for one engine: the plan's sha256 (None: no plan) and its sidecar."""

    plan_sha256: str | None = None
    sidecar: dict | None = None
    sidecar_error: str | None = None  # the sidecar is missing or unreadable
    load_error: str | None = None  # set once a deserialisation was tried and failed

    @classmethod
    def read(cls, plan_path: Path) -> "PlanState":
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            return cls()
        sidecar_path = plan_path.with_name(plan_path.name + ".json")
        try:
            sidecar, error = json.loads(sidecar_path.read_text(encoding="utf-8")), None
            if not isinstance(sidecar, dict) or not isinstance(sidecar.get("key"), dict):
                sidecar, error = None, f"{sidecar_path.name} has no 'key' object"
        except FileNotFoundError:
            sidecar, error = None, f"{sidecar_path.name} is missing"
        except (OSError, ValueError) as exc:
            sidecar, error = None, f"{sidecar_path.name} is unreadable ({exc})"
        return cls(plan_sha256=sha256_file(plan_path), sidecar=sidecar, sidecar_error=error)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decide(expected: dict | None, on_disk: PlanState, unavailable: str | None = None) -> Decision:
    """Build, reuse, rebuild or refuse, with the reason; pure (no TensorRT, no files).

    ``expected`` is the key of the engine we need (None when it cannot be computed); ``unavailable``
    says why TensorRT cannot run here (not installed, no GPU). A plan is reused only when its sidecar
    records the same key, the plan file is the one recorded, and (``load_error``) it deserialised.
    """
    if unavailable is not None or expected is None:
        return Decision(Action.REFUSE, unavailable or "no engine key: TensorRT device information is unavailable")
    if on_disk.plan_sha256 is None:
        return Decision(Action.BUILD, "no engine yet")
    if on_disk.sidecar is None:
        return Decision(Action.REBUILD, f"the engine's build record {on_disk.sidecar_error or 'is missing'}: "
                                        "what it was built for is unknown")
    if on_disk.sidecar.get("plan_sha256") != on_disk.plan_sha256:
        return Decision(Action.REBUILD, "the plan file is not the one recorded at build time (sha256 differs): "
                                        "corrupt, truncated or replaced")
    found = on_disk.sidecar["key"]
    changed = [f"{label}: built for {_short(found.get(name))}, need {_short(expected.get(name))}"
               for name, label in _KEY_FIELDS.items() if found.get(name) != expected.get(name)]
    if changed:
        return Decision(Action.REBUILD, "; ".join(changed))
    if on_disk.load_error is not None:
        return Decision(Action.REBUILD, f"the plan does not deserialise: {on_disk.load_error}")
    return Decision(Action.REUSE, "engine key matches (GPU, compute capability, TensorRT, ONNX, profile, precision)")


# ---------------------------------------------------------------------------------------------
# The GPU and TensorRT: the only code that needs them.

def parse_nvidia_smi(text: str, visible: str | None = None) -> tuple[str, str]:
    """(name, compute capability) of the GPU this process uses, from
    ``nvidia-smi --query-gpu=index,uuid,name,compute_cap --format=csv,noheader``; ``visible`` is
    CUDA_VISIBLE_DEVICES (its first entry, an index or a UUID, is device 0)."""
    rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    rows = [r for r in rows if len(r) == 4]
    if not rows:
        raise TensorRTUnavailable(f"no GPU listed by nvidia-smi (output: {text.strip()[:200]!r})")
    first = (visible or "").split(",")[0].strip()
    for index, uuid, name, cc in rows:
        if first in (index, uuid) or (first and uuid.startswith(first)):
            return name, cc
    if first and first != "all":
        raise TensorRTUnavailable(f"CUDA_VISIBLE_DEVICES={visible!r} names no GPU that nvidia-smi lists: {rows}")
    return rows[0][2], rows[0][3]


def detect_gpu() -> tuple[str, str]:
    """(name, compute capability) via nvidia-smi, else torch.cuda; TensorRTUnavailable when no GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return parse_nvidia_smi(out, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except (OSError, subprocess.SubprocessError) as exc:
        smi_error = exc
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    raise TensorRTUnavailable(f"no CUDA GPU visible (nvidia-smi: {smi_error}); TensorRT engines are built on the "
                              "GPU that will run them")


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    fp32_layers: tuple[str, ...]  # layers pinned to FP32 by keep_fp32


class TensorRTBackend:
    """Device information, engine build and plan deserialisation with the real ``tensorrt``."""

    def __init__(self, trt) -> None:
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)

    @classmethod
    def create(cls) -> "TensorRTBackend":
        return cls(import_tensorrt())

    def device(self) -> DeviceInfo:
        name, cc = detect_gpu()
        return DeviceInfo(name, cc, self.trt.__version__)

    def load_error(self, plan: bytes, spec: GraphSpec) -> str | None:
        """None when the plan deserialises and has the spec's tensors, else why not."""
        trt = self.trt
        try:
            engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        except Exception as exc:  # noqa: BLE001 (TensorRT raises its own types, or returns None)
            return f"{type(exc).__name__}: {exc}"
        if engine is None:
            return f"TensorRT {trt.__version__} could not deserialise it (see the log above)"
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        expected = set(spec.input_names + spec.output_names)
        if names != expected:
            return f"its tensors {sorted(names)} are not the contract's {sorted(expected)}"
        return None

    def _network_flags(self) -> int:
        trt = self.trt
        explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
        major = int(trt.__version__.split(".")[0])
        return 1 << int(explicit) if explicit is not None and major < 10 else 0  # TensorRT 10: always explicit

    def _parse(self, builder, onnx_path: Path):
        trt = self.trt
        network = builder.create_network(self._network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):  # from the file: external data is found beside it
            errors = []
            for i in range(parser.num_errors):
                e = parser.get_error(i)
                node_name = e.node_name() if hasattr(e, "node_name") else ""
                op = e.node_operator() if hasattr(e, "node_operator") else ""
                errors.append(f"node {e.node()} {node_name!r} ({op}): {e.desc()}")
            raise EngineError(f"{onnx_path}: the TensorRT ONNX parser failed on {len(errors)} node(s):\n  "
                              + "\n  ".join(errors))
        return network, parser

    def _keep_fp32(self, network, patterns: Sequence[str]) -> tuple[str, ...]:
        trt = self.trt
        floats = (trt.float32, trt.float16)
        # Layers whose precision means nothing (they compute no floats) are left to TensorRT.
        skip = {getattr(trt.LayerType, t) for t in ("CAST", "SHAPE", "CONSTANT", "IDENTITY", "ASSERTION")
                if hasattr(trt.LayerType, t)}
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        chosen = set(matching_names([layer.name for layer in layers], patterns))
        kept = []
        for layer in (layer for layer in layers if layer.name in chosen and layer.type not in skip):
            outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if not any(o.dtype in floats for o in outputs):  # shape / index arithmetic: no precision to pin
                continue
            layer.precision = trt.float32
            for j, o in enumerate(outputs):
                if o.dtype in floats:
                    layer.set_output_type(j, trt.float32)
            kept.append(layer.name)
        return tuple(kept)

    def build(self, leaf: LeafModel, settings: BuildSettings, timing_cache: Path) -> BuiltEngine:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network, _parser = self._parse(builder, leaf.onnx_path)  # the parser must outlive the build
        inputs = {network.get_input(i).name for i in range(network.num_inputs)}
        if inputs != set(leaf.spec.input_names):
            raise EngineError(f"{leaf.onnx_path}: inputs {sorted(inputs)} are not the contract's "
                              f"{sorted(leaf.spec.input_names)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
        config.builder_optimization_level = settings.optimization_level
        if settings.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(leaf.spec, leaf.ranges).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        kept = self._keep_fp32(network, leaf.keep_fp32) if settings.fp16 else ()
        if kept:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        try:
            cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        except Exception:  # noqa: BLE001 (an unreadable cache file only costs time: start a new one)
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"{leaf.onnx_path}: TensorRT {trt.__version__} could not build an engine "
                              "(see the builder log above)")
        _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
        return BuiltEngine(bytes(serialized), kept)


# ---------------------------------------------------------------------------------------------
# ensure_engine: decide, then reuse, copy from the cache, or build.

def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _install(plan: bytes, sidecar: dict, plan_path: Path) -> None:
    """Write plan then sidecar: a crash between the two leaves a plan without record, which is rebuilt."""
    _write_atomic(plan_path, plan)
    _write_atomic(plan_path.with_name(plan_path.name + ".json"), (json.dumps(sidecar, indent=2) + "\n").encode())


def _remove_engine(plan_path: Path) -> None:
    for path in (plan_path, plan_path.with_name(plan_path.name + ".json")):
        path.unlink(missing_ok=True)


def timing_cache_path(cache_dir: Path, device: DeviceInfo) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device.gpu_name}-sm{device.compute_capability}-trt{device.tensorrt_version}")
    return Path(cache_dir) / "timing" / f"{slug}.cache"


def _verified(backend, plan_path: Path, key: dict, spec: GraphSpec) -> Decision:
    """decide() for one plan file, deserialising it when the key matches."""
    state = PlanState.read(plan_path)
    decision = decide(key, state)
    if decision.action is Action.REUSE:
        decision = decide(key, replace(state, load_error=backend.load_error(plan_path.read_bytes(), spec)))
    return decision


def ensure_engine(version_dir: Path, cache_dir: Path, backend=None, settings: BuildSettings = BuildSettings()) -> dict:
    """Make ``version_dir/model.plan`` an engine for this GPU, TensorRT and ONNX file; returns what was done.

    ``backend`` defaults to :class:`TensorRTBackend` (tests pass a stand-in with ``device``, ``build`` and
    ``load_error``). Raises :class:`EngineRefused` when TensorRT or the GPU is unavailable, leaving no
    mismatched engine behind for a server to load.
    """
    leaf = load_leaf(version_dir)
    record = {"model": leaf.name, "version_dir": str(leaf.version_dir), "plan": str(leaf.plan_path)}
    try:
        backend = backend or TensorRTBackend.create()
        device = backend.device()
    except TensorRTUnavailable as exc:
        decision = decide(None, PlanState.read(leaf.plan_path), unavailable=str(exc))
        raise EngineRefused(f"{leaf.name}: {decision.action.value}: {decision.reason}") from exc
    key = engine_key(device, sha256_file(leaf.onnx_path), profile_shapes(leaf.spec, leaf.ranges), leaf.keep_fp32,
                     settings)
    digest = key_digest(key)
    record.update(digest=digest, gpu=device.gpu_name, compute_capability=device.compute_capability,
                  tensorrt=device.tensorrt_version)
    decision = _verified(backend, leaf.plan_path, key, leaf.spec)
    if decision.action is Action.REUSE:
        return {**record, "action": decision.action.value, "reason": decision.reason, "seconds": 0.0}
    if decision.action is Action.REBUILD:
        _remove_engine(leaf.plan_path)  # never leave a mismatched or corrupt engine for the server

    cached = Path(cache_dir) / leaf.name / digest / PLAN_FILE
    start = time.perf_counter()
    if _verified(backend, cached, key, leaf.spec).action is Action.REUSE:
        _install(cached.read_bytes(), json.loads(cached.with_name(SIDECAR_FILE).read_text(encoding="utf-8")), leaf.plan_path)
        return {**record, "action": Action.REUSE.value, "seconds": round(time.perf_counter() - start, 3),
                "reason": f"{decision.reason}; reused the cached engine {cached}"}

    built = backend.build(leaf, settings, timing_cache_path(cache_dir, device))
    seconds = round(time.perf_counter() - start, 3)
    sidecar = {"key": key, "digest": digest, "plan_sha256": hashlib.sha256(built.plan).hexdigest(),
               "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": seconds,
               "fp32_layers": list(built.fp32_layers), "onnx": str(leaf.onnx_path)}
    _install(built.plan, sidecar, cached)
    _install(built.plan, sidecar, leaf.plan_path)
    return {**record, "action": decision.action.value, "reason": decision.reason, "seconds": seconds,
            "fp32_layers": len(built.fp32_layers)}


def leaf_version_dirs(repo: Path) -> list[Path]:
    """Every ``REPO/<model>/<version>/`` holding a graph.json (python models and others have none)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise EngineError(f"{repo}: not a model repository directory")
    return sorted(v for m in repo.iterdir() if m.is_dir() for v in m.iterdir()
                  if v.is_dir() and v.name.isdigit() and (v / GRAPH_FILE).is_file())


def ensure_repository_engines(repo: Path, cache_dir: Path, backend=None,
                              settings: BuildSettings = BuildSettings()) -> list[dict]:
    """:func:`ensure_engine` for every leaf model of a repository; raises EngineRefused before touching
    any when TensorRT or the GPU is unavailable."""
    leaves = leaf_version_dirs(repo)
    if leaves and backend is None:
        try:
            backend = TensorRTBackend.create()
        except TensorRTUnavailable as exc:
            names = ", ".join(v.parent.name for v in leaves)
            raise EngineRefused(f"refused to prepare engines for {names}: {exc}") from exc
    return [ensure_engine(v, cache_dir, backend, settings) for v in leaves]
