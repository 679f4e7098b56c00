"""``shelfml bench --serving-config``: the CPU configuration the repository ships, chosen by measurement.

Each variant (precision x instances x dynamic batching) is built from the same tagger export into its own
repository, served by the real ``tritonserver``, and sent the same one-text requests at each concurrency level
(gRPC, asyncio); requests per second and p50/p99 latency are recorded. The variants run in turn, ``repeats``
rounds of all of them (interleaved, so a slow minute of a shared machine does not land on one variant); the
table gives each one's median over the rounds and the range of its requests per second. ``serving_config.json``
and ``serving_config.md`` (the README's table) are written into ``--out``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shelfml.benchmarks.reliability import _fire, _latency
from shelfml.model_repository.build import Batching, build_repository
from shelfml.model_repository.server import TritonServer


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "int8"
    batching: Batching = Batching()


VARIANTS = (
    Variant("fp32, 1 instance, no preferred sizes", "fp32", Batching(preferred=())),
    Variant("int8, 1 instance, no preferred sizes", batching=Batching(preferred=())),
    Variant("int8, 2 instances, no preferred sizes", batching=Batching(instances=2, preferred=())),
    Variant("int8, 1 instance, preferred 8/16/32/64 (default)"),
    Variant("int8, 1 instance, no preferred sizes, 2 ms queue delay",
            batching=Batching(preferred=(), max_queue_delay_us=2000)),
)


def measure(repo: Path, texts: list[str], requests: int, concurrency: tuple[int, ...], log: Path) -> dict:
    """Requests per second and latency of one repository at each concurrency level (after a warm-up)."""
    levels = {}
    with TritonServer(repo, log_file=log) as server:
        asyncio.run(_fire(server.grpc_url, [[t] for t in texts[:64]], 8, 120.0))  # warm-up
        for c in concurrency:
            batch = [[texts[i % len(texts)]] for i in range(requests)]
            t0 = time.perf_counter()
            results = asyncio.run(_fire(server.grpc_url, batch, c, 120.0))
            wall = time.perf_counter() - t0
            levels[str(c)] = {"requests": requests, "failures": sum(r["outcome"] != "ok" for r in results),
                              "requests_per_s": round(requests / wall, 1), **_latency(results)}
    return levels


def sweep(tagger_export: Path, out: Path, texts: list[str], requests: int = 1000,
          concurrency: tuple[int, ...] = (1, 8, 64), variants: tuple[Variant, ...] = VARIANTS,
          repeats: int = 3) -> dict:
    """Every variant measured ``repeats`` times, interleaved (one server at a time); results written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    repos = {}
    for i, v in enumerate(variants):
        repos[v.name] = out / "work" / f"variant-{i}"
        build_repository(repos[v.name], tagger=tagger_export, cpu_precision=v.precision, batching=v.batching,
                         force=True)
    rounds = {v.name: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            rounds[v.name].append(measure(repos[v.name], texts, requests, concurrency, out / "triton.log"))
    rows = [{"variant": v.name, "precision": v.precision, "batching": asdict(v.batching), "rounds": rounds[v.name],
             "levels": {c: _median(r[c] for r in rounds[v.name]) for c in rounds[v.name][0]}} for v in variants]
    results = {"tagger_export": str(tagger_export), "requests_per_level": requests, "repeats": repeats,
               "variants": rows}
    (out / "serving_config.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (out / "serving_config.md").write_text("\n".join(table(results)) + "\n", encoding="utf-8")
    return results


def _median(levels) -> dict:
    levels = list(levels)
    rps = [m["requests_per_s"] for m in levels]
    return {"requests": sum(m["requests"] for m in levels), "failures": sum(m["failures"] for m in levels),
            "requests_per_s": statistics.median(rps), "requests_per_s_range": [min(rps), max(rps)],
            **{k: statistics.median(m[k] for m in levels) for k in ("p50_ms", "p99_ms") if k in levels[0]}}


def table(results: dict) -> list[str]:
    levels = list(results["variants"][0]["levels"])
    head = ("| CPU config (tagger) | " + " | ".join(f"c={c}: req/s (range), p50 / p99 ms" for c in levels)
            + " |")
    lines = [head, "|---" * (1 + len(levels)) + "|"]
    for row in results["variants"]:
        cells = [f"{m['requests_per_s']:.0f} ({m['requests_per_s_range'][0]:.0f}-{m['requests_per_s_range'][1]:.0f}), "
                 f"{m.get('p50_ms')} / {m.get('p99_ms')}"
                 + (f" ({m['failures']} failed)" if m["failures"] else "") for m in row["levels"].values()]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return lines
