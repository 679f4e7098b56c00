"""Exports -> a self-contained Triton model repository serving both models.

    REPO/
      repository.json                     what was built from what (exports, hashes, runtime)
      tagger_encoder/  tagger_decoder/  price_regressor/        leaf graphs
        config.pbtxt                      stock NGC config: onnxruntime_onnx (model.onnx) or tensorrt_plan (model.plan)
        configs/cpu.pbtxt                 python backend running ONNX Runtime on the same model.onnx
        1/model.onnx 1/model.py 1/graph.json (contract + shape ranges + FP32 layers: the engine builder's input)
      tagger/  price/                     python models: tokenisation, decode loop / picture decoding
        config.pbtxt configs/cpu.pbtxt 1/model.py 1/assets/ warmup/
      catalog/                            python model: one request -> both models (when both are served)

Version N of a python model runs version N of its leaves; ``shelfml repository --add-version`` adds the next
version of every model of a family together (:mod:`shelfml.model_repository.versions`).

Configs are built as Triton ``ModelConfig`` protobuf messages (the schema tritonclient ships) from
the contracts in export/contract.py, so a config can only hold fields Triton knows.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from shelfml.catalog import CATALOG_SERVICE
from shelfml.checkpoint import ensure_writable, sha256_file, write_checkpoint
from shelfml.contract import TRITON_DTYPES, GraphSpec, ShapeRanges, TensorSpec
from shelfml.drift import DRIFT_WINDOW
from shelfml.exports import ASSETS, ExportError, read_export, verify_files
from shelfml.families import FAMILIES, Family, family
from shelfml.integrity import model_files
from shelfml.labels import Taxonomy
from shelfml.retrieval.policy import recorded_index_path
from shelfml.serving import SERVED_CODE

RUNTIMES = ("onnxruntime", "tensorrt")  # what the stock config.pbtxt of a leaf runs in the NGC container
CPU_CONFIG = "cpu"  # configs/cpu.pbtxt, started with --model-config-name=cpu
CPU_PRECISIONS = ("auto", "int8", "fp32")  # what the CPU config runs: auto = INT8 where the export validated it
INT8_FILE = "model.int8.onnx"
SOURCES = Path(__file__).parent / "models"
QUEUE_DELAY_US = 0  # dynamic batching: no wait for more requests (a busy model queues them anyway, and a batch
# forms from the queue when it is free; at one request in flight any wait is pure latency)


@dataclass(frozen=True)
class QueuePolicy:
    """Load shedding, per model (``shelfml repository --queue-limit N``): at most ``max_requests`` waiting
    requests (more are refused at once: UNAVAILABLE "Exceeds maximum queue size"), none waits longer than
    ``timeout_s`` or its client's own deadline (the client sends it) before it is refused unrun.

    Off by default: measured with Triton 2.51 on this machine, any ``default_queue_policy`` makes the dynamic
    batcher hold 1-2% of requests about 0.5 s at low load (tagger, one request at a time: p99 530 ms against
    26 ms without; the same throughput at 64 in flight). Without it, a request whose client gives up is still
    dropped from the queue unrun (gRPC cancellation). The README's reliability table has both."""

    max_requests: int = 256  # ~1 s of the default tagger's measured capacity (~260 requests/s at 64 in flight)
    timeout_s: float = 30.0

    def apply(self, config: mc.ModelConfig) -> None:
        policy = config.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = int(self.timeout_s * 1_000_000)
        policy.allow_timeout_override = True  # a request's own deadline may be shorter
        policy.max_queue_size = self.max_requests


@dataclass(frozen=True)
class Batching:
    """Instances and dynamic batching of every CPU config (``shelfml repository --instances N --preferred-batch
    8,16``). The defaults were chosen by ``shelfml bench --serving-config`` on this 2-core machine (README,
    "Serving configuration", 3 interleaved rounds of 1,000 requests per level): a second instance of the python
    models costs 23% of the throughput at 8 in flight (each ONNX Runtime session gets half the cores);
    preferred batch sizes 8/16/32/64 gave +3% at 8 in flight and +11% at 64 (the rounds' ranges overlap) and
    nothing at 1; a 2 ms queue delay gave nothing. No wait at all (``QUEUE_DELAY_US``), measured with perf_analyzer
    on the Flipkart tagger after jump-forward (two interleaved rounds): 79 against 54-72 requests/s at one in
    flight (p50 11.6 against 12.5-17.8 ms), 156-178 against 178-194 at 16 (a busy model still queues requests and
    batches them when it is free)."""

    instances: int = 1
    preferred: tuple[int, ...] = (8, 16, 32, 64)
    max_queue_delay_us: int = QUEUE_DELAY_US

    def apply(self, config: mc.ModelConfig) -> None:
        for group in config.instance_group:
            group.count = self.instances
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(p for p in self.preferred if p <= config.max_batch_size)
        config.dynamic_batching.max_queue_delay_microseconds = self.max_queue_delay_us


@dataclass(frozen=True)
class Monitoring:
    """What the python models (tagger, price, catalog) export and cache (``shelfml repository --drift-window N
    --no-metrics --response-cache``): the drift window's rows, the ``shelfml_`` metrics (:mod:`shelfml.monitoring`;
    off only to measure their cost), and Triton's response cache for the model (it
    answers a repeated request without running the model; the server's cache is sized by ``shelfml serve
    --cache-mb``).

    The response cache is off by default: measured with Triton 2.51, it stores a request the model answered with
    an error (an empty title, or an INTERNAL failure) as an empty success, and answers every later identical
    request with that: no outputs, no error (the shelfml clients name it; curl shows an empty answer)."""

    drift_window: int = DRIFT_WINDOW
    metrics: bool = True
    response_cache: bool = False

    def __post_init__(self) -> None:
        if self.drift_window < 1:
            raise ExportError(f"--drift-window must be at least 1 row, got {self.drift_window}")

    def apply(self, config: mc.ModelConfig) -> None:
        config.response_cache.enable = self.response_cache
        _parameters(config, metrics="on" if self.metrics else "off")
        if config.name != CATALOG_SERVICE.name:  # the catalog's rows are watched by the models it calls
            _parameters(config, drift_window=self.drift_window)


SERVED_MODELS = tuple(f.service.name for f in FAMILIES.values()) + (CATALOG_SERVICE.name,)  # the python models
LEAF_VERSIONS = 2  # versions of a leaf kept loaded: during a roll-out the serving version's leaves stay up
WARMUP_TEXT = "stainless steel water bottle 750 ml"



def _tensor(spec: TensorSpec, cls):
    return cls(name=spec.name, data_type=getattr(mc, TRITON_DTYPES[spec.dtype]), dims=spec.triton_dims())


def _config(spec: GraphSpec, max_batch: int, gpu: bool, **fields) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.name, max_batch_size=max_batch, **fields)
    config.input.extend(_tensor(t, mc.ModelInput) for t in spec.inputs)
    for t in config.input:
        t.optional = t.name in spec.optional
    config.output.extend(_tensor(t, mc.ModelOutput) for t in spec.outputs)
    config.dynamic_batching.SetInParent()  # on, with no wait (QUEUE_DELAY_US)
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.append(mc.ModelInstanceGroup(kind=kind, count=1))
    return config


def _parameters(config: mc.ModelConfig, **params: str) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = str(value)


def leaf_warmup(spec: GraphSpec, ranges: ShapeRanges) -> mc.ModelWarmup:
    """One zero-filled request at the opt shape (a past of at least one token)."""
    warmup = mc.ModelWarmup(name=f"{spec.name}-zeros", batch_size=1)
    for tensor in spec.inputs:
        dims = [max(d, 1) for d in ranges.shape(tensor, 1)[1:]]
        warmup.inputs[tensor.name].CopyFrom(mc.ModelWarmup.Input(
            data_type=getattr(mc, TRITON_DTYPES[tensor.dtype]), dims=dims, zero_data=True))
    return warmup


def leaf_configs(spec: GraphSpec, ranges: ShapeRanges, runtime: str,
                 cpu_file: str = "model.onnx") -> dict[str, mc.ModelConfig]:
    """The stock GPU config (ONNX Runtime or TensorRT backend on the FP32 ``model.onnx``) and the CPU
    python-backend config (ONNX Runtime on ``cpu_file``: the FP32 graph or its validated INT8 twin)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    max_batch = ranges.ranges["batch"][2]
    platform, filename = ("onnxruntime_onnx", "model.onnx") if runtime == "onnxruntime" else ("tensorrt_plan", "model.plan")
    stock = _config(spec, max_batch, gpu=True, platform=platform, default_model_filename=filename)
    cpu = _config(spec, max_batch, gpu=False, backend="python")
    _parameters(cpu, onnx_file=cpu_file, intra_op_threads="0")
    for config in (stock, cpu):
        config.model_warmup.append(leaf_warmup(spec, ranges))
        config.version_policy.latest.num_versions = LEAF_VERSIONS
    return {"config.pbtxt": stock, f"configs/{CPU_CONFIG}.pbtxt": cpu}


def service_configs(spec: GraphSpec, leaves: dict[str, GraphSpec], max_batch: int, **params: str) -> dict:
    """Python models (tagger, price): BLS to the leaves on GPU, the leaves' ONNX in-process on CPU."""
    out = {}
    for file, mode, gpu in (("config.pbtxt", "bls", True), (f"configs/{CPU_CONFIG}.pbtxt", "inprocess", False)):
        config = _config(spec, max_batch, gpu=False, backend="python")
        _parameters(config, assets=ASSETS, leaf_max_batch=str(max_batch), runner=mode, **params,
                    leaf_outputs=json.dumps({name: s.output_names for name, s in leaves.items()}))
        if mode == "inprocess":  # BLS calls cannot run while the server is still loading: no warm-up then
            warmup = mc.ModelWarmup(name=f"{spec.name}-text", batch_size=1)
            warmup.inputs["text"].CopyFrom(mc.ModelWarmup.Input(data_type=mc.TYPE_STRING, dims=[1],
                                                                 input_data_file="text"))
            config.model_warmup.append(warmup)
        out[file] = config
    return out


def write_config(path: Path, config: mc.ModelConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config), encoding="utf-8")


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's own schema (raises on any unknown field)."""
    return text_format.Parse(Path(path).read_text(encoding="utf-8"), mc.ModelConfig())


def _string_file(path: Path, text: str) -> None:
    """A warm-up input file for a TYPE_STRING tensor: 4-byte little-endian length + UTF-8 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    path.write_bytes(struct.pack("<I", len(data)) + data)


def _leaf(repo: Path, export_dir: Path, graph: dict, ranges: ShapeRanges, runtime: str, int8: bool) -> GraphSpec:
    """A leaf graph: the FP32 ``model.onnx`` (GPU: ONNX Runtime or the TensorRT engine built from it) and, when
    ``int8``, the export's validated INT8 graph for the CPU config; ``graph.json`` says which one CPU runs."""
    spec = GraphSpec.from_dict(graph)
    folder = repo / spec.name
    (folder / "1").mkdir(parents=True)
    shutil.copy2(export_dir / spec.file, folder / "1" / "model.onnx")
    cpu_file = "model.onnx"
    if int8 and graph.get("int8"):
        cpu_file = INT8_FILE
        shutil.copy2(export_dir / graph["int8"], folder / "1" / cpu_file)
    shutil.copy2(SOURCES / "onnx_leaf.py", folder / "1" / "model.py")
    (folder / "1" / "graph.json").write_text(json.dumps(
        {"spec": spec.to_dict(), "shape_ranges": ranges.to_dict(), "precision": {"keep_fp32": list(spec.keep_fp32)},
         "cpu_file": cpu_file, "encoder": graph.get("encoder")}, indent=2), encoding="utf-8")
    for name, config in leaf_configs(spec, ranges, runtime, cpu_file).items():
        write_config(folder / name, config)
    return spec


def cpu_int8(export_dir: Path, manifest: dict, precision: str) -> bool:
    """Whether the CPU config serves this export's INT8 graphs: ``auto`` when the export validated them (its
    INT8 check passed; ``shelfml export --no-int8`` makes none), ``int8`` requires them, ``fp32`` never."""
    if precision not in CPU_PRECISIONS:
        raise ExportError(f"--cpu-precision must be one of {CPU_PRECISIONS}, got {precision!r}")
    has = all(g.get("int8") for g in manifest["graphs"].values())
    if precision == "int8" and not has:
        raise ExportError(f"{export_dir} has no validated INT8 graphs (exported with --no-int8?): re-export it, "
                          "or pass --cpu-precision fp32")
    return precision != "fp32" and has


def _embedder_leaf(repo: Path, export_dir: Path, manifest: dict, ranges: ShapeRanges, runtime: str,
                   leaves: dict[str, GraphSpec], int8: bool) -> dict[str, str]:
    """A model trained with retrieval: its query encoder becomes the ``embedder`` leaf (shared by the tagger
    and the price model when both were trained against the same encoder weights)."""
    graph = manifest["graphs"].get("embedder")
    if graph is None:
        return {}
    built = repo / graph["name"] / "1" / "graph.json"
    if built.is_file():
        other = json.loads(built.read_text(encoding="utf-8")).get("encoder") or {}
        if other.get("digest") != graph["encoder"]["digest"]:
            raise ExportError(f"{export_dir}'s retrieval embedder ({graph['encoder']['name']}, weights "
                              f"{graph['encoder']['digest']}) differs from the one already in the repository "
                              f"({other.get('name')}, weights {other.get('digest')})")
        leaves[graph["name"]] = GraphSpec.from_dict(graph)
    else:
        leaves[graph["name"]] = _leaf(repo, export_dir, graph, ranges, runtime, int8)
    return {"embedder_model": graph["name"]}


def _service(repo: Path, export_dir: Path, spec: GraphSpec, source: str, leaves: dict[str, GraphSpec],
             max_batch: int, **params: str) -> None:
    """The family's python model: its model.py, the export's assets (tokenizer, manifest, and the retrieval
    index of a model trained with one), the warm-up input and both configs."""
    folder = repo / spec.name
    (folder / "1").mkdir(parents=True)
    shutil.copy2(SOURCES / source, folder / "1" / "model.py")
    retrieval = json.loads((export_dir / ASSETS / "shelfml.json").read_text(encoding="utf-8")).get("retrieval")
    if retrieval:  # a model trained with retrieval: its index ships inside the assets
        index = recorded_index_path(retrieval, export_dir / ASSETS)
        if not (index / "index.json").is_file():
            raise ExportError(f"{export_dir} was trained with retrieval index {retrieval['index']['fingerprint']}, "
                              f"which is not there to ship ({index} is missing)")
    shutil.copytree(export_dir / ASSETS, folder / "1" / ASSETS)
    _string_file(folder / "warmup" / "text", WARMUP_TEXT)
    for name, config in service_configs(spec, leaves, max_batch, **params).items():
        write_config(folder / name, config)


def write_family_models(repo: Path, export_dir: Path, manifest: dict, fam: Family, runtime: str, int8: bool,
                   options: dict | None = None) -> None:
    """A family's leaves (its graphs, plus the shared embedder of a retrieval model) and its python model."""
    ranges = ShapeRanges.from_dict(manifest["shape_ranges"])
    leaves, params = {}, {}
    for key, param in fam.leaves.items():
        spec = _leaf(repo, export_dir, manifest["graphs"][key], ranges, runtime, int8)
        leaves[spec.name], params[param] = spec, spec.name
    params |= _embedder_leaf(repo, export_dir, manifest, ranges, runtime, leaves, int8)
    sha = taxonomy_sha256(export_dir)
    if sha:  # checked at load against the assets (and by the catalog model against every tagger version)
        params["taxonomy_sha256"] = sha
    if options:  # the served model's own options (e.g. the tagger's thresholds), checked by the family
        if fam.serve_parameters is None:
            raise ExportError(f"the {fam.task} model takes no serving options, got {sorted(options)}")
        try:
            params |= fam.hook("serve_parameters")(export_dir / ASSETS, **options)
        except ValueError as e:
            raise ExportError(f"{fam.service.name}: {e}") from None
    _service(repo, export_dir, fam.service, fam.model_source, leaves, ranges.ranges["batch"][2], **params)


def family_model_names(repo: Path, task: str) -> list[str]:
    """The models a family's export became in a repository: its python model and the leaves it names (in its
    config's parameters), leaves first: the order a roll-out loads them in."""
    service = family(task).service.name
    params = read_config(Path(repo) / service / "config.pbtxt").parameters
    leaves = [params[p].string_value for p in (*family(task).leaves.values(), "embedder_model") if p in params]
    return leaves + [service]


def taxonomy_sha256(export_dir: Path) -> str | None:
    """The hash of the taxonomy an export's model predicts into (None: it has none, e.g. the price model)."""
    assets = json.loads((Path(export_dir) / ASSETS / "shelfml.json").read_text(encoding="utf-8"))
    return Taxonomy.from_dict(assets["taxonomy"]).sha256() if assets.get("taxonomy") else None


def _catalog(repo: Path, exports: dict[str, Path], manifests: dict[str, dict]) -> None:
    """The ``catalog`` python model over the tagger and price models (BLS only: it has no leaves of its own)."""
    folder = repo / CATALOG_SERVICE.name
    (folder / "1").mkdir(parents=True)
    shutil.copy2(SOURCES / "catalog.py", folder / "1" / "model.py")
    max_batch = min(ShapeRanges.from_dict(m["shape_ranges"]).ranges["batch"][2] for m in manifests.values())
    for file in ("config.pbtxt", f"configs/{CPU_CONFIG}.pbtxt"):
        config = _config(CATALOG_SERVICE, max_batch, gpu=False, backend="python")
        _parameters(config, tagger_model=family("tagger").service.name, price_model=family("price").service.name,
                    taxonomy_sha256=taxonomy_sha256(exports["tagger"]))
        write_config(folder / file, config)


def build_repository(repo: Path, tagger: Path | None = None, price: Path | None = None,
                     runtime: str = "onnxruntime", force: bool = False, queue: QueuePolicy | None = None,
                     cpu_precision: str = "auto", batching: Batching = Batching(),
                     options: dict[str, dict] | None = None, monitoring: Monitoring = Monitoring()) -> dict:
    """Write the repository for the given exports (atomically), with the ``catalog`` model when both are given;
    ``queue``: a load-shedding policy on every model; ``cpu_precision``: see :func:`cpu_int8`; ``batching``: of the
    CPU configs; ``options``: per task, its served model's options (the family's ``serve_parameters``);
    ``monitoring``: the python models' metrics and response cache. Returns repository.json's content."""
    if tagger is None and price is None:
        raise ExportError("nothing to serve: pass a tagger export, a price export, or both")
    exports = {"tagger": tagger, "price": price}
    manifests = {}
    for task, path in exports.items():
        if path is not None:
            manifests[task] = read_export(path, task=task)
            verify_files(path)
    int8 = {task: cpu_int8(exports[task], m, cpu_precision) for task, m in manifests.items()}
    ensure_writable(repo, force)

    def save(tmp: Path) -> None:
        for task, manifest in manifests.items():
            write_family_models(tmp, Path(exports[task]), manifest, family(task), runtime, int8[task],
                           {k: v for k, v in (options or {}).get(task, {}).items() if v is not None})
        if len(manifests) == 2:
            _catalog(tmp, exports, manifests)
        for path in sorted(tmp.glob("*/config.pbtxt")) + sorted(tmp.glob("*/configs/*.pbtxt")):
            config = read_config(path)
            if queue is not None:
                queue.apply(config)
            if path.parent.name == "configs":
                batching.apply(config)
            if config.name in SERVED_MODELS:
                monitoring.apply(config)
            write_config(path, config)

    def describe(tmp: Path) -> dict:
        return {"runtime": runtime, "cpu_config": CPU_CONFIG, "served_code": SERVED_CODE,
                "queue_policy": queue and asdict(queue),
                "cpu_batching": asdict(batching), "monitoring": asdict(monitoring),
                "cpu_precision": {task: "int8" if on else "fp32" for task, on in int8.items()},
                "models": sorted(p.name for p in tmp.iterdir() if (p / "config.pbtxt").is_file()),
                "exports": {task: {"path": Path(p).name, "files": manifests[task]["files"]}
                            for task, p in exports.items() if p is not None},
                "model_versions": {task: [{"version": 1, "export": Path(exports[task]).name,
                                           "models": family_model_names(tmp, task)}] for task in manifests},
                "onnx": {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.glob("*/1/model.onnx"))},
                "files": model_files(tmp),  # checked when served (shelfml.integrity)
                "serve": f"shelfml serve {repo}"}

    write_checkpoint(repo, save, describe, name="repository.json")
    print(f"shelfml: wrote the Triton model repository {repo}", file=sys.stderr)
    return json.loads((Path(repo) / "repository.json").read_text(encoding="utf-8"))



