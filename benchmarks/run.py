"""``shelfml bench``: every model x backend x workload, checked for agreement, then timed, into one JSON
(``results.json``), a Markdown report, a README section and PNG plots.

Order of work per model: build/convert every backend, run each workload's inputs once through every backend
and compare outputs (a required backend that disagrees stops the bench), count GFLOPs on the eager model,
then time the backends interleaved. W4 runs last against a real Triton server (the one given by ``grpc_url``,
or one started here on a repository built from the tagger export).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from shelfml.benchmarks import agreement
from shelfml.benchmarks.backends import (Backend, ModelUnderTest, export_graphs, parameters, price_backends,
                                         reference_price, reference_t5, tagger_backends, threads)
from shelfml.benchmarks.timing import interleaved, summarize
from shelfml.benchmarks.workloads import BATCH_SWEEP, WORKLOADS

SCHEMA = "shelfml.bench/1"
SEED_FIGURES = [
    {"figure": "Flan-T5-small inference time", "value": 0.46, "unit": "s",
     "what_it_measured": "as given in the issue: one inference of Flan-T5-small; the hardware, input and output "
                         "lengths, batch size and backend are not stated"},
    {"figure": "Flan-T5-small compute", "value": 15.19, "unit": "GFLOPs",
     "what_it_measured": "as given in the issue: GFLOPs of one Flan-T5-small inference; sequence lengths and "
                         "counting method (MACs or FLOPs, which ops) are not stated"},
]


@dataclass
class Repetitions:
    """Timed repetitions per workload (after ``warmup`` untimed calls per backend)."""

    warmup: int = 1
    w1: int = 20
    w2: int = 5
    w3: int = 8
    sweep: int = 2  # batch sizes of BATCH_SWEEP other than 1 and 32; 0 skips them
    profile: int = 3  # encoder/decoder split of the loop backends (W1)
    constrained: int = 10  # end-to-end constrained tagger, batch 1 (batch 32: a third of it, at least 2)
    w4_latency: int = 40  # requests per path (served, in-process)
    w4_rounds: int = 3  # rounds of each concurrency level
    w4_requests: int = 256  # requests per round (16 waves at concurrency 16: the ramp-up and tail stay small)

    @classmethod
    def quick(cls) -> "Repetitions":
        return cls(warmup=1, w1=5, w2=3, w3=3, sweep=0, profile=2, constrained=3, w4_latency=8, w4_rounds=1,
                   w4_requests=16)

    @classmethod
    def smallest(cls) -> "Repetitions":
        """For tests: every statistic exists, nothing is meaningful."""
        return cls(warmup=1, w1=2, w2=2, w3=2, sweep=0, profile=1, constrained=2, w4_latency=3, w4_rounds=1,
                   w4_requests=8)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    import onnxruntime as ort

    from shelfml.onnxrt import SessionConfig

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "threads": threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "onnxruntime_session": SessionConfig.from_env().to_dict(),
            "onnxruntime_providers": ort.get_available_providers(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: _version(p) for p in ("shelfml", "torch", "transformers", "onnxruntime", "onnx",
                                                    "ctranslate2", "numpy", "tritonclient", "nvidia-pytriton",
                                                    "matplotlib")}}


def _progress(message: str) -> None:
    print(f"shelfml bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Models


def _tagger_models(checkpoint, export, reference_shape, work: Path, steps: int) -> list[ModelUnderTest]:
    from shelfml.onnxrt import load_session
    from shelfml.tagger.runners import OrtT5
    from shelfml.tagger import Tagger

    models = []
    if checkpoint is not None:
        tagger = Tagger.load(Path(checkpoint))
        tok = tagger.tokenizer
        start, eos = tok.pad_token_id, tok.eos_token_id
        runners = {p: OrtT5.load(export, int8=p == "int8") for p in ("fp32", "int8")}
        backends = tagger_backends(tagger.model, runners, Path(checkpoint), work / "tagger-trained", steps, start, eos)
        models.append(ModelUnderTest(
            "tagger-trained", "tagger", f"the trained tagger checkpoint {checkpoint}", backends, tagger.model,
            len(tok), {"start": start, "eos": eos, "first_id": max(start, eos, tok.unk_token_id) + 1},
            {"checkpoint": str(checkpoint), "export": str(export), "tagger": tagger}))
    if reference_shape:
        model = reference_t5(reference_shape)
        out = work / f"tagger-{reference_shape}-random"
        _progress(f"exporting the random {reference_shape}-shape T5 to ONNX (FP32 + INT8)")
        files = export_graphs(model, out / "onnx", "tagger")
        runners = {p: OrtT5(load_session(files[p]["encoder"]), load_session(files[p]["decoder"])) for p in files}
        model.save_pretrained(out / "hf")
        cfg = model.config
        backends = tagger_backends(model, runners, out / "hf", out, steps, cfg.decoder_start_token_id,
                                   cfg.eos_token_id)
        key = "flan-t5-small" if reference_shape == "small" else reference_shape
        models.append(ModelUnderTest(
            f"tagger-{key}-random", "tagger", f"random weights of the {reference_shape} shape "
            f"({'flan-t5-small dimensions, ' if reference_shape == 'small' else ''}vocabulary {cfg.vocab_size}); "
            "speed only", backends, model, cfg.vocab_size,
            {"start": cfg.decoder_start_token_id, "eos": cfg.eos_token_id, "first_id": 3}))
    return models


def _price_models(checkpoint, export, reference: bool, work: Path) -> list[ModelUnderTest]:
    from shelfml.onnxrt import load_session
    from shelfml.price.runners import OrtPrice
    from shelfml.price import PriceRegressor

    models = []
    pairs = []
    if checkpoint is not None:
        regressor = PriceRegressor.load(Path(checkpoint))
        runners = {p: OrtPrice.load(export, int8=p == "int8") for p in ("fp32", "int8")}
        pairs.append(("price-trained", f"the trained price checkpoint {checkpoint}", regressor, runners,
                      {"checkpoint": str(checkpoint), "export": str(export)}))
    if reference:
        regressor = reference_price()
        _progress("exporting the all-MiniLM-L6-v2 price model to ONNX (FP32 + INT8)")
        files = export_graphs(regressor.model, work / "price-minilm" / "onnx", "price")
        runners = {p: OrtPrice(load_session(files[p]["model"])) for p in files}
        pairs.append(("price-minilm-random-head", "all-MiniLM-L6-v2 weights with an untrained head; speed only",
                      regressor, runners, {}))
    for key, description, regressor, runners, info in pairs:
        tok = regressor.tokenizer
        encoder_cfg = regressor.model.text_encoder.config
        models.append(ModelUnderTest(
            key, "price", description, price_backends(regressor, runners), regressor.model, tok.vocab_size,
            {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "first_id": 1000 if tok.vocab_size > 2000 else 5,
             "max_positions": getattr(encoder_cfg, "max_position_embeddings", 512)}, info))
    return models


# ---------------------------------------------------------------------------------------------
# Workloads


def _time_workload(m: ModelUnderTest, timed: list[Backend], wid: str, inputs: tuple[np.ndarray, np.ndarray],
                   reps: int, warmup: int, gflops: float | None) -> dict:
    ids, mask = inputs
    batch = len(ids)
    samples = interleaved({b.name: (lambda b=b: b.run(ids, mask)) for b in timed}, reps=reps, warmup=warmup)
    stats = {name: summarize(s, batch) for name, s in samples.items()}
    eager = [n for n in stats if n.startswith("eager")]
    ref = min(eager, key=lambda n: stats[n]["p50_ms"]) if eager else None  # the faster eager variant
    for name, s in stats.items():
        if ref:
            s["speedup_vs_eager"] = stats[ref]["p50_ms"] / s["p50_ms"]
        if gflops is not None:
            s["gflops_per_s"] = gflops / (s["mean_ms"] / 1e3)
    return {"workload": wid, "batch": batch, "input_tokens": int(ids.shape[1]), "eager_reference": ref,
            "reps": reps, "backends": stats}


def bench_model(m: ModelUnderTest, reps: Repetitions, seed: int, texts: list[str] | None) -> dict:
    """Agreement, GFLOPs and timing of every workload of the model's family profile, then its own sections."""
    from shelfml.families import family

    profile = family(m.task).hook("bench")
    timed = [b for b in m.backends if b.run is not None]
    result = {"task": m.task, "description": m.description, "parameters": parameters(m.torch_model),
              "backends": {b.name: b.describe() for b in m.backends}, "agreement": {}, "gflops": {}, "results": {}}
    result |= profile.describe(m)
    for wid, batch, n in profile.plan(reps):
        ids, mask = profile.inputs(m, batch, profile.input_tokens, seed)
        if wid in WORKLOADS:
            _progress(f"{m.key} {wid}: agreement of {len(timed)} backends")
            outputs = agreement.run_outputs(timed, ids, mask)
            result["agreement"][wid] = agreement.check(profile.compare, timed, outputs, profile.reference, wid)
            result["agreement"][wid]["sample"] = np.asarray(outputs[profile.reference])[:1].tolist()
        g = profile.gflops(m.torch_model, ids, mask, profile.new_tokens)
        result["gflops"][wid] = {k: v for k, v in g.items() if k != "decoder_per_step"}
        _progress(f"{m.key} {wid}: timing batch {batch}, {n} interleaved repetitions")
        result["results"][wid] = _time_workload(m, timed, wid, (ids, mask), n, reps.warmup, g["total"])
    for name, section in profile.sections.items():
        _progress(f"{m.key}: {name}")
        value = section(m, timed, reps, seed, texts)
        if value is not None:
            result[name] = value
    return result


# ---------------------------------------------------------------------------------------------
# Serving


def _serving(tagger_model: ModelUnderTest | None, reps: Repetitions, texts, grpc_url, exports, out: Path,
             perf: bool, stack: contextlib.ExitStack) -> dict:
    from shelfml.benchmarks.serving import serve_workload

    if tagger_model is None:
        return {"status": "skipped", "reason": "W4 serves the trained tagger: pass a tagger checkpoint"}
    from shelfml.tagger.runners import OrtT5

    url = grpc_url
    if url is None:
        from shelfml.model_repository.build import build_repository
        from shelfml.model_repository.server import TritonServer

        _progress("building the Triton repository and starting tritonserver")
        build_repository(out / "work" / "repository", tagger=exports["tagger"], price=exports.get("price"),
                         force=True)  # the bench's own work folder
        server = stack.enter_context(TritonServer(out / "work" / "repository", log_file=out / "triton.log"))
        os.environ["SHELFML_ADMIN_KEY"] = server.admin_key  # its statistics are read for the server profile
        url = server.grpc_url
        from shelfml.tagger.runners import inprocess_step_factory

        # the in-process path runs the very files the served CPU config runs (INT8 where validated)
        make_step = inprocess_step_factory(out / "work" / "repository", "tagger_encoder", "tagger_decoder")
    else:
        make_step = OrtT5.load(exports["tagger"]).make_step  # a given server: its graphs are not known here
    tagger = tagger_model.info["tagger"]
    _progress(f"W4: {reps.w4_latency} requests per path at batch 1, then concurrency "
              f"{WORKLOADS['W4'].concurrency} x {reps.w4_rounds} rounds of {reps.w4_requests}")
    result = serve_workload(tagger, make_step, url, texts[: reps.w4_requests], reps.w4_latency,
                            WORKLOADS["W4"].concurrency, reps.w4_rounds)
    result["url"] = url
    result["in_process_graphs"] = "the export's FP32 graphs" if grpc_url else "the repository's CPU leaves (what the server runs)"
    result["server"] = "given" if grpc_url else "started by the bench (CPU configs: python backend + ONNX Runtime)"
    if perf:
        result["perf_analyzer"] = _perf_analyzer(url, texts[: reps.w4_requests], out)
    return result


def _perf_analyzer(url: str, texts: list[str], out: Path) -> dict:
    from shelfml.benchmarks.perf_analyzer import PerfAnalyzerUnavailable, run_perf_analyzer, write_input_data

    data = write_input_data(out / "perf_analyzer_input.json", texts)
    try:
        from shelfml.model_repository.server import grpc_admin_headers

        _progress("perf_analyzer at concurrency 1, 4, 16")
        key = os.environ.get("SHELFML_ADMIN_KEY", "")  # the model APIs perf_analyzer reads are restricted
        result = run_perf_analyzer(url, "tagger", data, WORKLOADS["W4"].concurrency, out,
                                   headers=grpc_admin_headers(key) if key else None)
    except Exception as e:  # perf_analyzer is a beside-figure: its failure is recorded, never fatal
        status = "skipped" if isinstance(e, (PerfAnalyzerUnavailable, OSError)) else "failed"
        return {"status": status, "reason": f"{type(e).__name__}: {e}", "input_data": str(data)}
    if all(level["status"] != "measured" for level in result["levels"].values()):
        result["status"] = "failed"
    return result


# ---------------------------------------------------------------------------------------------


def run_bench(out_dir, checkpoint=None, price_checkpoint=None, quick: bool = False, exports: dict | None = None,
              grpc_url: str | None = None, reps: Repetitions | None = None, perf_analyzer: bool = False,
              reference: bool | None = None, seed: int = 0, force: bool = False, command: str | None = None) -> dict:
    """Run the matrix; write ``results.json``, ``report.md``, ``README-results.md`` and plots into ``out_dir``.

    ``checkpoint`` / ``price_checkpoint``: trained checkpoints (W1-W4 / W3); ``exports``: their ONNX exports
    (exported here when missing); ``grpc_url``: a running server with those exports (W4; else one is started);
    ``reference``: also bench random flan-t5-small-shape and MiniLM weights (default: not quick, or no checkpoint).
    """
    from shelfml.benchmarks.report import write_outputs
    from shelfml.checkpoint import ensure_writable

    started = time.perf_counter()
    out = Path(out_dir)
    ensure_writable(out, force)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    reps = reps or (Repetitions.quick() if quick else Repetitions())
    exports = dict(exports or {})
    torch.manual_seed(seed)
    stage: dict[str, float] = {}

    def tick(name: str, t0: float) -> float:
        stage[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    t0 = time.perf_counter()
    _export_missing(exports, {"tagger": checkpoint, "price": price_checkpoint}, work)
    t0 = tick("export", t0)
    steps = WORKLOADS["W1"].new_tokens
    tagger_ref = reference if reference is not None else (not quick or checkpoint is None)
    price_ref = reference if reference is not None else (not quick or price_checkpoint is None)
    shape = "tiny" if quick else "small"
    models = _tagger_models(checkpoint, exports.get("tagger"), shape if tagger_ref else None, work, steps)
    models += _price_models(price_checkpoint, exports.get("price"), price_ref, work)
    t0 = tick("build_backends", t0)

    texts = _texts(checkpoint, reps)
    results = _header(command, quick, reps, seed)
    for m in models:
        results["models"][m.key] = bench_model(m, reps, seed, texts)
        t0 = tick(m.key, t0)
    with contextlib.ExitStack() as stack:
        tagger_trained = next((m for m in models if m.key == "tagger-trained"), None)
        results["serving"] = _serving(tagger_trained, reps, texts, grpc_url, exports, out, perf_analyzer, stack)
    t0 = tick("serving", t0)
    from shelfml.benchmarks.retrieval import retrieval_benchmark
    from shelfml.retrieval.errors import KINDS

    _progress("W6: retrieval (FAISS index kinds over synthetic MiniLM-sized vectors)")
    results["retrieval"] = retrieval_benchmark(rows=5_000 if quick else 100_000, queries=50 if quick else 500,
                                               encoder=not quick, kinds=("flat", "hnsw") if quick else KINDS)
    tick("retrieval", t0)
    results["skipped"] = _skipped(results)
    results["stage_seconds"] = stage
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_outputs(results, out)
    _progress(f"wrote {out}/results.json, report.md and plots in {results['elapsed_s']:.0f} s")
    return results


def _export_missing(exports: dict, checkpoints: dict, work: Path) -> None:
    """Export each given checkpoint that has no export yet into ``work``."""
    for task, ckpt in checkpoints.items():
        if ckpt is not None and task not in exports:
            from shelfml.export.exporter import ExportArgs, export_checkpoint

            _progress(f"exporting {ckpt} (FP32 + INT8; INT8 accepted whatever its accuracy: it is benched, "
                      "its agreement reported)")
            exports[task] = work / f"{task}-export"
            export_checkpoint(Path(ckpt), exports[task], ExportArgs(parity_rows=16, int8_max_drop=100.0), force=True)


def _texts(checkpoint, reps: Repetitions) -> list[str] | None:
    """Real product texts of the trained tagger's data for the constrained and served workloads."""
    if checkpoint is None:
        return None
    from shelfml.benchmarks.serving import serving_texts

    return serving_texts(Path(checkpoint), max(reps.w4_requests, 32))


def _header(command: str | None, quick: bool, reps: Repetitions, seed: int) -> dict:
    """What results.json says about the run before any model is timed."""
    return {"schema": SCHEMA, "command": command or _command(), "quick": quick,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(), "repetitions": asdict(reps), "seed": seed,
            "workloads": {k: w.to_dict() for k, w in WORKLOADS.items()}, "batch_sweep": list(BATCH_SWEEP),
            "seed_figures": SEED_FIGURES, "models": {}}


def _skipped(results: dict) -> list[dict]:
    skipped = [{"model": k, "backend": name, "reason": b["reason"]} for k, m in results["models"].items()
               for name, b in m["backends"].items() if b["status"] == "skipped"]
    if results["serving"]["status"] == "skipped":
        skipped.append({"model": "tagger-trained", "backend": "triton-grpc", "reason": results["serving"]["reason"]})
    return skipped


def _command() -> str:
    return " ".join(["shelfml", *sys.argv[1:]]) if Path(sys.argv[0]).name == "shelfml" else "run_bench(...)"
