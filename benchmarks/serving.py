"""W4: tagger requests end to end through Triton gRPC.

Latency at batch 1: the served ``tagger`` (one request per text, the sync client) interleaved with the same
constrained decode run in-process on the same ONNX graphs (``Tagger.predict`` with ``OrtT5.make_step``).
Throughput: the asyncio client keeps ``concurrency`` single-text requests in flight over the same texts;
the server's dynamic batching may join them. The server's own statistics (queue vs compute time, executions
vs inferences) are recorded as the profile of where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from shelfml.benchmarks.timing import interleaved, summarize

SERVED_MODELS = ("tagger", "tagger_encoder", "tagger_decoder")


def serving_texts(checkpoint: Path, n: int) -> list[str]:
    """The first ``n`` texts of the checkpoint's parity sample (its test split; repeated when shorter), so
    the bench needs no training data; an older checkpoint without one re-reads its recorded test split."""
    from shelfml.checkpoint import CheckpointError, read_manifest
    from shelfml.parity import read_parity_sample

    try:
        texts = read_parity_sample(checkpoint).inputs
    except CheckpointError:
        from shelfml.evaluate import evaluation_rows

        texts = evaluation_rows(read_manifest(checkpoint, task="tagger", weights=False), None, "test")[0].inputs()
    assert texts, f"{checkpoint}: the test split is empty"
    return [texts[i % len(texts)] for i in range(n)]


def server_stats(url: str, models=SERVED_MODELS) -> dict:
    """Cumulative counts and nanoseconds per model from the server's statistics endpoint (a restricted API:
    the admin key is ``$SHELFML_ADMIN_KEY``, which the bench sets for a server it starts)."""
    import tritonclient.grpc as grpcclient

    from shelfml.model_repository.server import grpc_admin_headers

    from tritonclient.utils import InferenceServerException

    headers = grpc_admin_headers(os.environ.get("SHELFML_ADMIN_KEY", ""))
    client = grpcclient.InferenceServerClient(url)
    try:
        out = {}
        for model in models:
            try:
                stats = client.get_inference_statistics(model, as_json=True, headers=headers).get("model_stats", [])
            except InferenceServerException as e:  # restricted without the operator's key: no server profile
                if "restricted" in (e.message() or ""):
                    return {}
                raise
            if not stats:
                continue
            s = stats[0]
            inf = s.get("inference_stats", {})
            out[model] = {"inference_count": int(s.get("inference_count", 0)),
                          "execution_count": int(s.get("execution_count", 0)),
                          **{f"{k}_ns": int(inf.get(k, {}).get("ns", 0)) for k in
                             ("queue", "compute_input", "compute_infer", "compute_output", "success")}}
        return out
    finally:
        client.close()


def stats_delta(before: dict, after: dict) -> dict:
    """Per model over an interval: requests, executions, average batch, and ms per request of each phase."""
    out = {}
    for model, a in after.items():
        b = before.get(model, {k: 0 for k in a})
        d = {k: a[k] - b.get(k, 0) for k in a}
        requests = max(d["inference_count"], 1)
        out[model] = {"inferences": d["inference_count"], "executions": d["execution_count"],
                      "average_batch": d["inference_count"] / max(d["execution_count"], 1),
                      **{k.replace("_ns", "_ms_per_inference"): d[k] / 1e6 / requests for k in d if k.endswith("_ns")}}
    return out


async def _burst(url: str, texts: list[str], concurrency: int) -> float:
    from shelfml.client.client import AsyncShelfmlClient

    async with AsyncShelfmlClient(url, batch_size=1, concurrency=concurrency) as client:
        await client.tag(texts[:1])  # the model config lookup, outside the timed part
        start = time.perf_counter()
        results = await client.tag(texts)
        elapsed = time.perf_counter() - start
    assert len(results) == len(texts), f"{len(results)} results for {len(texts)} texts"
    return elapsed


def serve_workload(tagger, make_step, url: str, texts: list[str], reps: int, concurrency: tuple[int, ...],
                   burst_rounds: int) -> dict:
    """Agreement, then batch-1 latency (served vs in-process, interleaved), then throughput per concurrency."""
    from shelfml.client.client import ShelfmlClient

    client = ShelfmlClient(url, batch_size=1)
    try:
        check = texts[: min(len(texts), 16)]
        local = tagger.predict(check, batch_size=1, make_step=make_step)
        served = client.tag(check)
        same = [tuple(p.label.path) == s.path and p.label.brand == s.brand for p, s in zip(local, served)]
        agreement = {"rows": len(check), "label_agreement": sum(same) / len(same), "required": True}
        if not all(same):
            from shelfml.benchmarks.agreement import AgreementError

            raise AgreementError(f"W4: the served tagger disagrees with the in-process ONNX Runtime path on "
                                 f"{len(same) - sum(same)} of {len(same)} texts before timing")
        cursor = {"in-process": 0, "triton-grpc": 0}

        def one(name: str, fn):
            def call():
                text = texts[cursor[name] % len(texts)]
                cursor[name] += 1
                fn([text])
            return call

        before = server_stats(url)
        samples = interleaved({"in-process": one("in-process",
                                                           lambda t: tagger.predict(t, 1, make_step=make_step)),
                               "triton-grpc": one("triton-grpc", client.tag)}, reps=reps, warmup=2)
        latency_stats = stats_delta(before, server_stats(url))
    finally:
        client.close()
    latency = {name: summarize(s, 1) for name, s in samples.items()}

    before = server_stats(url)
    walls: dict[int, list[float]] = {c: [] for c in concurrency}
    for r in range(burst_rounds):  # concurrency levels interleaved round by round
        order = list(concurrency) if r % 2 == 0 else list(reversed(concurrency))
        for c in order:
            walls[c].append(asyncio.run(_burst(url, texts, c)))
    throughput = {str(c): {"requests": len(texts), "rounds": burst_rounds,
                           "wall_s": walls[c], "throughput_items_s": len(texts) * len(walls[c]) / sum(walls[c]),
                           "throughput_items_s_best": len(texts) / min(walls[c])}
                  for c in concurrency}
    return {"status": "timed", "agreement": agreement, "latency": latency, "throughput": throughput,
            "texts": len(texts),
            "server_profile": {"latency_phase": latency_stats, "throughput_phase": stats_delta(before, server_stats(url))}}
