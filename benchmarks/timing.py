"""One timing profile for every backend: warm-up, then repetitions interleaved across backends (each round in
a rotated order, so drift and noisy neighbours hit every backend alike), then named statistics."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

PERCENTILES = (50, 90, 99)


def summarize(samples_s, items_per_call: int = 1) -> dict:
    """p50/p90/p99/mean/std/min (ms) of per-call wall times, and throughput (items per second over the mean)."""
    x = np.asarray(samples_s, dtype=np.float64) * 1e3
    assert x.size > 0, "no samples to summarise"
    stats = {f"p{p}_ms": float(np.percentile(x, p)) for p in PERCENTILES}
    stats.update(n=int(x.size), mean_ms=float(x.mean()), std_ms=float(x.std()), min_ms=float(x.min()),
                 throughput_items_s=float(items_per_call / (x.mean() / 1e3)), items_per_call=items_per_call)
    return stats


def interleaved(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each call, ``reps`` times, after ``warmup`` untimed calls each; round r starts at
    backend r mod n."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    return samples
