"""Workload W6 of the bench: FAISS index kinds on synthetic vectors (build time, memory, batch-1 latency,
throughput, recall@k against exact search) and the MiniLM query encoder's batch-1 latency."""

from __future__ import annotations

import resource
import time
from typing import Sequence

import numpy as np

from shelfml.retrieval.index import (IndexArgs, _faiss, _set_search_width, _tie_aware_recall, make_index,
                                     true_scores)


def _synthetic_vectors(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """Clustered unit vectors (products come in families), so approximate recall means something."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def retrieval_benchmark(rows: int = 100_000, dimension: int = 384, kinds: Sequence[str] = ("flat", "hnsw"),
                        k: int = 10, queries: int = 500, batch: int = 1024, seed: int = 0,
                        encoder: bool = False) -> dict:
    """Build time, index memory, batch-1 query latency (p50/p95/p99 ms), batch throughput and recall@k
    against exact search, over ``rows`` synthetic vectors; ``encoder=True`` adds MiniLM's batch-1
    embedding latency (the query's other half)."""
    faiss = _faiss()
    data = _synthetic_vectors(rows + queries + batch, dimension, seed)
    corpus, single, many = data[:rows], data[rows : rows + queries], data[rows + queries :]
    exact = faiss.IndexFlatIP(dimension)
    exact.add(corpus)
    truth, _ = exact.search(single, k)
    out: dict = {"workload": "W6 retrieval", "rows": rows, "dimension": dimension, "k": k, "queries": queries,
                 "batch": batch, "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "kinds": {}}
    for kind in kinds:
        args = IndexArgs(kind=kind)
        rss = _rss_mib()
        start = time.perf_counter()
        index = make_index(corpus, args)
        build_s = time.perf_counter() - start
        _set_search_width(index, k)
        index.search(single[:10], k)  # warm-up
        times, found_ids = [], []
        for q in single:
            t = time.perf_counter()
            _, ids = index.search(q[None], k)
            times.append(time.perf_counter() - t)
            found_ids.append(ids[0])
        t = time.perf_counter()
        index.search(many, k)
        batch_s = time.perf_counter() - t
        ms = np.array(times) * 1000
        out["kinds"][kind] = {
            "build_s": round(build_s, 3),
            "index_bytes": int(faiss.serialize_index(index).size),
            "peak_rss_growth_mib": round(_rss_mib() - rss, 1),
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 4) for q in (50, 95, 99)},
            "batch_queries_per_s": round(batch / batch_s, 1),
            "recall_at_k": round(_tie_aware_recall(truth, true_scores(single, corpus, np.array(found_ids)),
                                                   np.array(found_ids)), 4),
        }
    if encoder:
        from shelfml.retrieval.embedder import shared_embedder

        embedder = shared_embedder()
        texts = [f"cotton t-shirt for men pack of {i}" for i in range(50)]
        embedder.encode(texts[:5])
        times = []
        for text in texts:
            t = time.perf_counter()
            embedder.encode([text])
            times.append(time.perf_counter() - t)
        out["encoder_batch1_ms"] = {"p50": round(float(np.percentile(times, 50) * 1000), 3),
                                    "p95": round(float(np.percentile(times, 95) * 1000), 3)}
    out["seed_reference_ms"] = 70.0  # the IndoML seed's offline query time, for comparison
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m shelfml.benchmarks.retrieval --rows 1000000``: W6 at catalog scale, as JSON (and a table)."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw_sq", help="comma-separated index kinds")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--out", help="write the results JSON here")
    a = p.parse_args(argv)
    result = retrieval_benchmark(rows=a.rows, kinds=tuple(a.kinds.split(",")), queries=a.queries)
    for kind, r in result["kinds"].items():
        r["bytes_per_million_vectors"] = int(r["index_bytes"] / a.rows * 1_000_000)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("| kind | recall@10 | MB per 1M vectors | build s | p50 ms | p99 ms | batch q/s |")
    print("|---|---|---|---|---|---|---|")
    for kind, r in result["kinds"].items():
        print(f"| {kind} | {r['recall_at_k']:.3f} | {r['bytes_per_million_vectors'] / 2**20:,.0f} | "
              f"{r['build_s']:.1f} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | "
              f"{r['batch_queries_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
