"""Serving footprint: time to READY and the memory of every python backend stub, idle and after requests.

``python -m shelfml.benchmarks.footprint --repo REPO --out OUT.json [--requests 1000]`` starts the real
``tritonserver`` on ``REPO`` (:class:`shelfml.model_repository.server.TritonServer`), records the wall time from
the server process's start to READY, then the RSS and PSS of each ``triton_python_backend_stub`` child (one per
model instance; its command line names the model) right after READY (after a settle), sends ``requests``
single-text gRPC requests to each service model (``tagger``, ``price``; ``image`` left out) and measures again.
Only ``tritonclient`` and the server wrapper are used, so the tool runs unchanged on old and new code.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from shelfml.model_repository.server import TritonServer

STUB = "triton_python_backend_stub"
SERVICES = ("tagger", "price")  # models a client calls; the others are leaves they call
SETTLE_S = 2.0
TEXTS = ("Apple iPhone 13 128GB Midnight Blue", "Nike Air Zoom Pegasus 39 running shoes men",
         "Samsung 55 inch 4K UHD smart LED TV", "Prestige Omega deluxe non-stick fry pan 24 cm",
         "Levi's 511 slim fit jeans dark wash 32x32", "Philips HL7756 750W mixer grinder 3 jars",
         "LEGO Classic medium creative brick box 10696", "boAt Rockerz 450 bluetooth on-ear headphones",
         "Himalaya herbals purifying neem face wash 150 ml", "Wildcraft 45 L rucksack backpack grey",
         "HP 15s Ryzen 5 laptop 8GB RAM 512GB SSD", "cotton printed kurta for women, festive wear")


def _children(pid: int) -> list[int]:
    """Every descendant pid of ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        kids: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], list(kids.get(pid, []))
        while todo:
            p = todo.pop()
            found.append(p)
            todo += kids.get(p, [])
        return found


def _started(pid: int) -> float | None:
    """The epoch time ``pid`` started (from its age in /proc, 10 ms ticks), or None when unreadable."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB, from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) / 1024  # kB -> MB
    return values["Rss"], values["Pss"]


def _stubs(server: TritonServer) -> dict[str, list[int]]:
    """Model name -> the pids of its python backend stubs (argv[1] is ``REPO/<model>/<version>/model.py``)."""
    models: dict[str, list[int]] = {}
    for pid in _children(server.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if Path(argv[0]).name != STUB or len(argv) < 2:
            continue
        path = Path(argv[1]).resolve()
        model = path.relative_to(server.repo).parts[0] if path.is_relative_to(server.repo) else path.parent.parent.name
        models.setdefault(model, []).append(pid)
    return models


def _snapshot(stubs: dict[str, list[int]]) -> dict[str, tuple[float, float]]:
    """Model name -> (RSS, PSS) in MB, summed over its instances."""
    sums = {m: [_memory_mb(p) for p in pids] for m, pids in stubs.items()}
    return {m: (round(sum(r for r, _ in v), 1), round(sum(p for _, p in v), 1)) for m, v in sums.items()}


def _send(url: str, model: str, requests: int) -> None:
    """``requests`` gRPC requests of one text each (BYTES ``text``, shape [1, 1]); raises on the first error."""
    client = grpcclient.InferenceServerClient(url)
    metadata = client.get_model_metadata(model, as_json=True)
    outputs = [grpcclient.InferRequestedOutput(o["name"]) for o in metadata["outputs"]]
    for i in range(requests):
        inp = grpcclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[TEXTS[i % len(TEXTS)].encode()]], dtype=object))
        client.infer(model, [inp], outputs=outputs, client_timeout=120)
    client.close()


def measure_footprint(repo: str | os.PathLike, requests: int = 1000) -> dict:
    """Start the server on ``repo``, measure the stubs idle and after ``requests`` requests per service; stop."""
    t0 = time.time()
    with TritonServer(repo) as server:
        ready = time.time()
        t0 = _started(server.process.pid) or t0
        time.sleep(SETTLE_S)
        stubs = _stubs(server)
        idle = _snapshot(stubs)
        served = {m["name"] for m in server.repository_index()}
        for model in (m for m in SERVICES if m in served):
            _send(server.grpc_url, model, requests)
        after = _snapshot(stubs)
    return {"time_to_ready_s": round(ready - t0, 2), "requests": requests, "repo": str(Path(repo).resolve()),
            "stubs": {m: {"instances": len(stubs[m]), "idle_rss_mb": idle[m][0], "idle_pss_mb": idle[m][1],
                          "after_rss_mb": after[m][0], "after_pss_mb": after[m][1]} for m in sorted(stubs)}}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="the model repository to serve")
    parser.add_argument("--out", required=True, help="the JSON written")
    parser.add_argument("--requests", type=int, default=1000, help="requests per service model")
    args = parser.parse_args(argv)
    result = measure_footprint(args.repo, args.requests)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    table = Table(title=f"{result['repo']}: READY in {result['time_to_ready_s']} s, "
                        f"{result['requests']} requests per service")
    for col in ("stub", "idle RSS MB", "idle PSS MB", "after RSS MB", "after PSS MB"):
        table.add_column(col, justify="left" if col == "stub" else "right")
    for model, s in result["stubs"].items():
        table.add_row(model, *(f"{s[k]:.1f}" for k in ("idle_rss_mb", "idle_pss_mb", "after_rss_mb", "after_pss_mb")))
    total = {k: sum(s[k] for s in result["stubs"].values()) for k in ("idle_rss_mb", "idle_pss_mb",
                                                                      "after_rss_mb", "after_pss_mb")}
    table.add_row("total", *(f"{v:.1f}" for v in total.values()))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
