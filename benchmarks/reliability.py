"""``shelfml bench --reliability``: the served models under hostile input, load, overload, faults and corrupt
artifacts, against the real ``tritonserver`` on a model repository.

Sections (each a dict in the JSON, with ``ok`` saying whether its checks held):
- ``bad_input``: malformed requests over gRPC and over HTTP (KServe v2 JSON, as ``curl`` sends it); each must be
  answered with a clear error, and the next good request must equal the reference answer.
- ``bounded_work``: the worst legal request (the per-request byte limit filled with long rows) against a normal
  request of as many rows: time ratio, and the tagger stub's memory against idle.
- ``load``: requests of one text at each concurrency level: failures, answers equal to the reference, rate,
  latency, memory growth.
- ``overload``: more requests at once than the queue holds, each with a deadline: shed at once (UNAVAILABLE),
  refused unrun when their deadline passes in the queue, p50/p99 of the admitted, and the rows computed for a
  client that had already left (from the models' own ``shelfml_rows_total``).
- ``faults``: SIGKILL of the server in the middle of ``shelfml-client batch``, restart, rerun: every id once, in
  order; SIGTERM with requests in flight: all answered, exit code 0.
- ``corrupt``: a copy of the repository with flipped bytes in a graph: refused by ``shelfml verify`` and at
  model load, naming the file.

All traffic is on loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from shelfml.benchmarks.footprint import TEXTS, _snapshot, _stubs
from shelfml.client.client import server_timeout_us
from shelfml.model_repository.server import TritonServer
from shelfml.serving import MAX_REQUEST_BYTES, MAX_TEXT_BYTES

SHED = ("Exceeds maximum queue size", "Request timeout expired")
MAX_BATCH = 64  # rows of one execute() of the served tagger
# Rows a request whose client left may still cost: the execute in flight at its deadline, and one more batch whose
# answers were sent but not read before the client's own timer fired (a busy 2-core host). Unrun dropping of the
# queued rest is what is checked: without it every admitted request past its deadline would be computed.
NOBODY_ROWS = 2 * MAX_BATCH


@dataclass
class Plan:
    """How much of each section runs (the defaults: the README table; :meth:`quick`: CI)."""

    load_requests: int = 3000  # per concurrency level
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    overload_requests: int = 384  # sent at once: more than the queue's 256
    overload_rows: int = 16
    overload_deadline_s: float = 10.0
    worst_reps: int = 3
    batch_rows: int = 600  # the fault section's catalog
    drain_requests: int = 32

    @classmethod
    def quick(cls) -> "Plan":
        return cls(load_requests=60, concurrency=(1, 8), overload_requests=300, overload_rows=4,
                   overload_deadline_s=3.0, worst_reps=1, batch_rows=120, drain_requests=8)


# ---------------------------------------------------------------------------------------------
# Requests


def _text_input(values, name: str = "text", datatype: str = "BYTES", shape=None):
    array = np.array(values, dtype=object).reshape(-1, 1) if datatype == "BYTES" and shape is None else np.asarray(values)
    tensor = grpcclient.InferInput(name, list(shape or array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _answers(result) -> list[tuple[str, str]]:
    """(path, brand) of each row of a tagger response, as served."""
    return [(p[0].decode(), b[0].decode()) for p, b in zip(result.as_numpy("path"), result.as_numpy("brand"))]


def _tag(client, texts: list[str], **kw) -> list[tuple[str, str]]:
    return _answers(client.infer("tagger", [_text_input([t.encode() for t in texts])], **kw))


def _status(e: InferenceServerException) -> str:
    return str(e.status() or "").rsplit(".", 1)[-1]


GRPC_CASES = {  # name -> (inputs, the status a clear answer has)
    "empty": (lambda: [_text_input([b""])], "INVALID_ARGUMENT"),
    "blank-row": (lambda: [_text_input([b"steel bottle", b"   "])], "INVALID_ARGUMENT"),
    "non-utf8": (lambda: [_text_input([b"\xff\xfe caf\xe9"])], "INVALID_ARGUMENT"),
    "nul-only": (lambda: [_text_input([b"\x00\x00\x00"])], "INVALID_ARGUMENT"),
    "zero-width-only": (lambda: [_text_input(["\u200b\u200c\ufeff".encode()])], "INVALID_ARGUMENT"),
    "row-over-1MiB": (lambda: [_text_input([b"x" * (MAX_TEXT_BYTES + 1)])], "INVALID_ARGUMENT"),
    "request-over-limit": (lambda: [_text_input([b"bottle " * (MAX_TEXT_BYTES // 7)] * 5)], "INVALID_ARGUMENT"),
    "batch-of-0": (lambda: [_text_input(np.zeros((0, 1), dtype=object), shape=[0, 1])], "INVALID_ARGUMENT"),
    "wrong-name": (lambda: [_text_input([b"bottle"], name="title")], "INVALID_ARGUMENT"),
    "wrong-dtype": (lambda: [_text_input(np.array([[1.0]], dtype=np.float32), datatype="FP32")], "INVALID_ARGUMENT"),
    "wrong-shape": (lambda: [_text_input(np.array([[b"a", b"b"]], dtype=object), shape=[1, 2])], "INVALID_ARGUMENT"),
    "over-max-batch": (lambda: [_text_input([b"bottle"] * 65)], "INVALID_ARGUMENT"),
    "no-input": (lambda: [], "INVALID_ARGUMENT"),
}
# name -> (path, body, the HTTP statuses of a clear answer). Triton 2.51's HTTP frontend answers a body it
# cannot parse as JSON (or a JSON value of the wrong type) with 500 and a message naming the problem: accepted
# as clear here, and recorded; every other malformed request gets 400.
PARSE = (400, 500)
HTTP_CASES = {
    "not-json": ("/v2/models/tagger/infer", b"{not json", PARSE),
    "empty-body": ("/v2/models/tagger/infer", b"", PARSE),
    "no-inputs": ("/v2/models/tagger/infer", b'{"inputs": []}', (400,)),
    "wrong-datatype": ("/v2/models/tagger/infer",
                       b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}]}', (400,)),
    "shape-data-mismatch": ("/v2/models/tagger/infer",
                            b'{"inputs": [{"name": "text", "shape": [3, 1], "datatype": "BYTES", "data": ["a"]}]}',
                            (400,)),
    "huge-shape": ("/v2/models/tagger/infer",
                   b'{"inputs": [{"name": "text", "shape": [100000000, 1], "datatype": "BYTES", "data": ["a"]}]}',
                   (400,)),
    "negative-dim": ("/v2/models/tagger/infer",
                     b'{"inputs": [{"name": "text", "shape": [-1, 1], "datatype": "BYTES", "data": ["a"]}]}', PARSE),
    "number-as-text": ("/v2/models/tagger/infer",
                       b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [42]}]}', PARSE),
    "empty-text": ("/v2/models/tagger/infer",
                   b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [""]}]}', (400,)),
    "unknown-model": ("/v2/models/colour/infer",
                      b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}',
                      (400, 404)),
}


def _http(url: str, path: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{url}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300]


def bad_input(server: TritonServer, reference: list[tuple[str, str]]) -> dict:
    """Every malformed request answered clearly, and the next good request identical to the reference."""
    cases = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for name, (inputs, expected) in GRPC_CASES.items():
            try:
                client.infer("tagger", inputs(), client_timeout=60)
                status, message = "OK", ""
            except InferenceServerException as e:
                status, message = _status(e), (e.message() or "")[:200]
            cases[f"grpc:{name}"] = {"status": status, "message": message, "clear": status == expected,
                                     "next_good_identical": _tag(client, TEXTS[:4]) == reference}
        for name, (path, body, expected) in HTTP_CASES.items():
            code, message = _http(server.http_url, path, body)
            clear = code in expected and '"error"' in message  # an error status with the reason in the body
            cases[f"http:{name}"] = {"status": code, "message": message, "clear": clear,
                                     "next_good_identical": _tag(client, TEXTS[:4]) == reference}
    ok = all(c["clear"] and c["next_good_identical"] for c in cases.values())
    return {"ok": ok, "cases": cases, "grpc": len(GRPC_CASES), "http": len(HTTP_CASES)}


# ---------------------------------------------------------------------------------------------
# Bounded work


def _timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _long_text(nbytes: int, seed: int) -> str:
    words = " ".join(TEXTS).split()
    rng = np.random.default_rng(seed)
    out = " ".join(rng.choice(words, size=nbytes // 5))
    return out[:nbytes]


def bounded_work(server: TritonServer, plan: Plan) -> dict:
    """The worst legal requests (rows up to the per-row limit, the request up to the per-request limit) against
    normal requests of as many rows; the tagger stub's memory before and after."""
    stubs = {m: p for m, p in _stubs(server).items() if m == "tagger"}
    idle = _snapshot(stubs)["tagger"][0]
    rows = {"4 rows of 1 MiB": [_long_text(MAX_REQUEST_BYTES // 4 - 16, i) for i in range(4)],
            "64 rows of 64 KiB": [_long_text(MAX_REQUEST_BYTES // 64 - 16, i) for i in range(64)]}
    out = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for name, texts in rows.items():
            normal = [TEXTS[i % len(TEXTS)] for i in range(len(texts))]
            t_normal = _timed(lambda: _tag(client, normal, client_timeout=300), plan.worst_reps)
            t_worst = _timed(lambda: _tag(client, texts, client_timeout=300), plan.worst_reps)
            out[name] = {"rows": len(texts), "bytes": sum(len(t.encode()) for t in texts),
                         "normal_s": round(t_normal, 4), "worst_s": round(t_worst, 4),
                         "ratio": round(t_worst / t_normal, 2)}
    after = _snapshot(stubs)["tagger"][0]
    ok = all(r["ratio"] <= 10 for r in out.values()) and after - idle <= 100
    return {"ok": ok, "requests": out, "tagger_rss_idle_mb": idle, "tagger_rss_after_mb": after,
            "growth_mb": round(after - idle, 1), "goal": "worst <= 10x normal; memory within 100 MB of idle"}


# ---------------------------------------------------------------------------------------------
# Load and overload


async def _fire(url: str, texts_per_request: list[list[str]], concurrency: int, deadline_s: float) -> list[dict]:
    """Each request once, at most ``concurrency`` in flight; per request its outcome and latency."""
    client = grpcaio.InferenceServerClient(url)
    slots = asyncio.Semaphore(concurrency)

    async def one(texts: list[str]) -> dict:
        async with slots:
            t0 = time.perf_counter()
            try:
                result = await client.infer("tagger", [_text_input([t.encode() for t in texts])],
                                            client_timeout=deadline_s, timeout=server_timeout_us(deadline_s))
                return {"outcome": "ok", "s": time.perf_counter() - t0, "labels": _answers(result)}
            except InferenceServerException as e:
                message = e.message() or ""
                outcome = ("shed" if any(m in message for m in SHED) else
                           "deadline" if _status(e) == "DEADLINE_EXCEEDED" else _status(e) or "error")
                return {"outcome": outcome, "s": time.perf_counter() - t0, "message": message[:200]}

    try:
        return list(await asyncio.gather(*(one(t) for t in texts_per_request)))
    finally:
        await client.close()


def _latency(results: list[dict]) -> dict:
    s = np.array([r["s"] for r in results if r["outcome"] == "ok"]) * 1e3
    if not len(s):
        return {}
    return {"p50_ms": round(float(np.percentile(s, 50)), 2), "p99_ms": round(float(np.percentile(s, 99)), 2)}


def load(server: TritonServer, plan: Plan, expected: dict[str, tuple[str, str]]) -> dict:
    """``load_requests`` one-text requests at each concurrency level: no failure, the reference answers."""
    stubs = _stubs(server)
    before = _snapshot(stubs)
    levels = {}
    texts = list(expected)
    for c in plan.concurrency:
        batch = [[texts[i % len(texts)]] for i in range(plan.load_requests)]
        t0 = time.perf_counter()
        results = asyncio.run(_fire(server.grpc_url, batch, c, 120.0))
        wall = time.perf_counter() - t0
        failures = sum(r["outcome"] != "ok" for r in results)
        wrong = sum(r["outcome"] == "ok" and r["labels"][0] != expected[t[0]] for r, t in zip(results, batch))
        levels[str(c)] = {"requests": len(batch), "failures": failures, "wrong_answers": wrong,
                          "requests_per_s": round(len(batch) / wall, 1), **_latency(results)}
    after = _snapshot(stubs)
    growth = {m: round(after[m][0] - before[m][0], 1) for m in before}
    ok = all(v["failures"] == 0 and v["wrong_answers"] == 0 for v in levels.values())
    return {"ok": ok, "levels": levels, "stub_rss_growth_mb": growth}


def _metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample of the server's Prometheus metrics (0 when absent)."""
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _settled_metric(url: str, name: str, timeout_s: float = 15.0, **labels: str) -> float:
    """:func:`_metric` once two reads 2.5 s apart agree (the models publish every 0.5 s, the server refreshes
    every 2 s), so rows of an earlier section are not counted in the next one."""
    value, deadline = _metric(url, name, **labels), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(2.5)
        value, previous = _metric(url, name, **labels), value
        if value == previous:
            break
    return value


def overload(server: TritonServer, plan: Plan) -> dict:
    """More requests at once than the queue holds, each with a deadline: what is shed, how fast, and whether
    any row was computed for a client that had left."""
    metrics_url = f"{server.local_host}:{server.metrics_port}"
    rows_before = _settled_metric(metrics_url, "shelfml_rows_total", model="tagger", outcome="ok")
    batch = [[TEXTS[(i + j) % len(TEXTS)] for j in range(plan.overload_rows)] for i in range(plan.overload_requests)]
    t0 = time.perf_counter()
    results = asyncio.run(_fire(server.grpc_url, batch, len(batch), plan.overload_deadline_s))
    wall = time.perf_counter() - t0
    rows_computed = _settled_metric(metrics_url, "shelfml_rows_total", model="tagger", outcome="ok") - rows_before
    counts = {o: sum(r["outcome"] == o for r in results) for o in sorted({r["outcome"] for r in results})}
    shed_s = [r["s"] for r in results if r["outcome"] == "shed" and "queue size" in r.get("message", "")]
    rows_answered = counts.get("ok", 0) * plan.overload_rows
    out = {"requests": len(batch), "rows_per_request": plan.overload_rows, "deadline_s": plan.overload_deadline_s,
           "outcomes": counts, "wall_s": round(wall, 2), "admitted": _latency(results),
           "queue_full_answered_within_ms": round(max(shed_s) * 1e3, 1) if shed_s else None,
           "rows_computed": int(rows_computed), "rows_answered": rows_answered,
           "rows_computed_for_nobody": int(rows_computed - rows_answered)}
    # Without a queue policy nothing is shed: requests wait, and those whose client gives up are dropped unrun.
    # A request its client leaves while it is being computed is finished (one execute: at most a batch of rows).
    policy = json.loads((server.repo / "repository.json").read_text(encoding="utf-8")).get("queue_policy")
    out["queue_policy"] = policy
    out["ok"] = ((counts.get("shed", 0) > 0 or not policy) and set(counts) <= {"ok", "shed", "deadline"}
                 and out["rows_computed_for_nobody"] <= NOBODY_ROWS)
    return out


# ---------------------------------------------------------------------------------------------
# Faults and corrupt artifacts


def _catalog(path: Path, rows: int) -> list[str]:
    ids = [f"sku-{i:05d}" for i in range(rows)]
    lines = ["id,title"] + [f"{i},\"{TEXTS[n % len(TEXTS)]} {n}\"" for n, i in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


CLIENT = "import sys; from shelfml.client.cli import main; sys.exit(main(sys.argv[1:]))"  # shelfml-client


def _client_batch(url: str, src: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-c", CLIENT, "--url", url, "--batch-size", "8", "batch", str(src),
                                 "--out", str(out), "--task", "tagger", "--id-col", "id", "--text-col", "title",
                                 "--concurrency", "4", "--no-progress"], stdout=f, stderr=subprocess.STDOUT)


def _written_ids(out: Path) -> list[str]:
    import csv

    if not out.is_file():
        return []
    with open(out, newline="", encoding="utf-8") as f:
        return [row[0] for row in list(csv.reader(f))[1:]]


def faults(repo: Path, work: Path, plan: Plan) -> dict:
    """SIGKILL mid-batch then a rerun gives every id once, in order; SIGTERM drains requests in flight."""
    src, out = work / "catalog.csv", work / "tags.csv"
    out.unlink(missing_ok=True)
    ids = _catalog(src, plan.batch_rows)
    server = TritonServer(repo, log_file=work / "triton-fault.log").start()
    ports = dict(http_port=server.http_port, grpc_port=server.grpc_port, metrics_port=server.metrics_port)
    log = work / "client-batch.log"
    log.unlink(missing_ok=True)
    proc = _client_batch(server.grpc_url, src, out, log)
    deadline = time.monotonic() + 300
    while len(_written_ids(out)) < plan.batch_rows // 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    written_at_kill = len(_written_ids(out))
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    first_exit = proc.wait(300)
    server = TritonServer(repo, log_file=work / "triton-fault2.log", **ports).start()
    try:
        rerun = _client_batch(server.grpc_url, src, out, log)
        rerun_exit = rerun.wait(600)
        got = _written_ids(out)
        kill = {"rows": len(ids), "written_when_killed": written_at_kill, "client_exit_after_kill": first_exit,
                "rerun_exit": rerun_exit, "every_id_once_in_order": got == ids,
                "client_log_tail": log.read_text(errors="replace").splitlines()[-3:]}
        drain = _drain(server, plan)
    finally:
        server.stop()
    return {"ok": kill["every_id_once_in_order"] and kill["rerun_exit"] == 0 and drain["drained"],
            "sigkill_mid_batch": kill, "sigterm": drain}


def _drain(server: TritonServer, plan: Plan) -> dict:
    """Requests in flight when SIGTERM arrives: all answered, the server exits 0."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            try:
                _tag(client, [TEXTS[(i + j) % len(TEXTS)] for j in range(16)], client_timeout=120)
                return "ok"
            except InferenceServerException as e:
                return _status(e)

    with ThreadPoolExecutor(plan.drain_requests) as pool:
        futures = [pool.submit(one, i) for i in range(plan.drain_requests)]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        outcomes = [f.result() for f in futures]
    code = server.process.wait(120)
    return {"in_flight": len(outcomes), "answered": outcomes.count("ok"), "exit_code": code,
            "drained": outcomes.count("ok") == len(outcomes) and code == 0}


def corrupt(repo: Path, work: Path) -> dict:
    """Flipped bytes in the tagger's encoder graph: refused by the repository check and at model load."""
    from shelfml.integrity import IntegrityError, verify
    from shelfml.model_repository.server import ModelLoadError

    copy = work / "corrupt-repo"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy)
    graph = copy / "tagger_encoder" / "1" / "model.onnx"
    data = bytearray(graph.read_bytes())
    for i in np.random.default_rng(0).choice(len(data), 200, replace=False):
        data[i] ^= 0xFF
    graph.write_bytes(bytes(data))
    out = {"file": str(graph.relative_to(copy)), "flipped_bytes": 200}
    try:
        verify(copy)
        out["verify"] = "accepted"
    except IntegrityError as e:
        out["verify"] = str(e)
    try:
        TritonServer(copy, log_file=work / "triton-corrupt.log").start(timeout_s=180).stop()
        out["server"] = "started"
    except ModelLoadError as e:
        out["server"] = str(e).splitlines()[1].strip()
    shutil.rmtree(copy, ignore_errors=True)
    out["ok"] = all(out["file"] in out[k] for k in ("verify", "server"))
    return out


# ---------------------------------------------------------------------------------------------


def run_reliability(repo: Path, out_dir: Path, plan: Plan | None = None) -> dict:
    """Every section against ``repo``; writes ``reliability.json`` and ``reliability.md`` into ``out_dir``."""
    plan = plan or Plan()
    repo, out = Path(repo).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"repo": str(repo), "plan": asdict(plan)}
    with TritonServer(repo, log_file=out / "triton.log") as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            reference = _tag(client, TEXTS[:4])
            expected = dict(zip(TEXTS, _tag(client, list(TEXTS))))
        results["bad_input"] = bad_input(server, reference)
        results["bounded_work"] = bounded_work(server, plan)
        results["load"] = load(server, plan, expected)
        results["overload"] = overload(server, plan)
        results["metrics"] = {o: _metric(f"{server.local_host}:{server.metrics_port}", "shelfml_requests_total",
                                         model="tagger", outcome=o) for o in ("ok", "invalid", "error", "cancelled")}
    results["faults"] = faults(repo, out, plan)
    results["corrupt"] = corrupt(repo, out)
    results["ok"] = all(results[k]["ok"] for k in ("bad_input", "bounded_work", "load", "overload", "faults",
                                                   "corrupt"))
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    (out / "reliability.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "reliability.md").write_text("\n".join(table(results)) + "\n", encoding="utf-8")
    return results


def table(r: dict) -> list[str]:
    """The README table."""
    mark = {True: "held", False: "**failed**"}
    b, lo, ov, f = r["bounded_work"], r["load"], r["overload"], r["faults"]
    clear = sum(c["clear"] for c in r["bad_input"]["cases"].values())
    same = sum(c["next_good_identical"] for c in r["bad_input"]["cases"].values())
    worst = max(b["requests"].values(), key=lambda v: v["ratio"])
    levels = ", ".join(f"c={c}: {v['requests']} req, {v['failures']} failed, {v['requests_per_s']} req/s, "
                       f"p99 {v.get('p99_ms', '-')} ms" for c, v in lo["levels"].items())
    kill, term = f["sigkill_mid_batch"], f["sigterm"]
    rows = [
        ("bad input", f"{r['bad_input']['grpc']} gRPC + {r['bad_input']['http']} HTTP JSON malformed requests: {clear} "
                      f"answered with a clear error, next good request identical {same} times", r["bad_input"]["ok"]),
        ("bounded work", f"worst legal request {worst['ratio']}x a normal one of {worst['rows']} rows "
                         f"({worst['bytes']:,} bytes); tagger stub {b['tagger_rss_idle_mb']} -> "
                         f"{b['tagger_rss_after_mb']} MB", b["ok"]),
        ("load", f"{levels}; stub RSS growth {lo['stub_rss_growth_mb']} MB", lo["ok"]),
        ("overload", f"queue policy {ov['queue_policy'] or 'off'}: "
                     f"{ov['requests']} requests of {ov['rows_per_request']} rows at once, deadline "
                     f"{ov['deadline_s']} s: {ov['outcomes']}; queue-full answered within "
                     f"{ov['queue_full_answered_within_ms']} ms; admitted p50/p99 {ov['admitted'].get('p50_ms')}/"
                     f"{ov['admitted'].get('p99_ms')} ms; rows computed for nobody: {ov['rows_computed_for_nobody']}",
         ov["ok"]),
        ("SIGKILL mid-batch", f"killed after {kill['written_when_killed']} of {kill['rows']} rows; rerun: every id once "
                              f"in order = {kill['every_id_once_in_order']}", kill["every_id_once_in_order"]),
        ("SIGTERM", f"{term['answered']} of {term['in_flight']} in-flight requests answered, exit code "
                    f"{term['exit_code']}", term["drained"]),
        ("corrupt graph", f"{r['corrupt']['flipped_bytes']} flipped bytes in {r['corrupt']['file']}: refused by "
                          "`shelfml verify` and at model load, naming the file", r["corrupt"]["ok"]),
    ]
    lines = ["| check | measured | result |", "|---|---|---|"]
    lines += [f"| {name} | {text} | {mark[bool(ok)]} |" for name, text, ok in rows]
    return lines
