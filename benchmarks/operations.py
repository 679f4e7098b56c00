"""``shelfml bench --operations``: what operating the served models gives and costs, on the real server, with a
real catalog's title stream (titles in file order: repeats as the catalog repeats them).

Sections (each a dict in the JSON):
- ``cache``: the stream through the ``catalog`` model with Triton's response cache (``--response-cache``) and
  without it (the server's cache size 0): hit rate (per
  model, from ``nv_cache_num_hits_per_model``), latency, and whether every answer is the same.
- ``metrics_overhead``: the tagger's served latency at batch 1 with every ``shelfml_`` metric on and off
  (two servers, interleaved rounds, unique titles, no cache): the goal is under 3%.
- ``rollout``: the stream through the ``catalog`` model at 4 requests in flight while a new tagger version is
  added and loaded, then rolled back: failed requests (goal 0), the versions that answered, each load's time.
- ``drift``: a real Prometheus scraping the server while the tagger's own catalog streams in (the mix it was
  trained on), then only the products of its rarest top-level category: the drift gauge before and after, the
  ShelfmlDrift alert's state, and a screenshot of Prometheus' graph of the gauge (headless Chromium).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from shelfml.benchmarks.prometheus import PrometheusProcess, find_binary, rules_for_test, scrape_config_for
from shelfml.client.client import AsyncShelfmlClient
from shelfml.model_repository.build import Monitoring, build_repository
from shelfml.model_repository.server import TritonServer
from shelfml.model_repository.versions import add_version, models_to_load, rollback

METRICS_OVERHEAD_GOAL = 0.03


def _metric(server: TritonServer, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(server.endpoints["metrics"], timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


async def _send(url: str, texts: list[str], task: str, concurrency: int) -> tuple[list[float], list, list[str]]:
    """One request per text, ``concurrency`` in flight: (seconds per request, answers in order, failures)."""
    seconds, answers, failures = [0.0] * len(texts), [None] * len(texts), []
    slots = asyncio.Semaphore(concurrency)
    async with AsyncShelfmlClient(url, retries=0, concurrency=concurrency) as client:
        call = getattr(client, task)

        async def one(i: int) -> None:
            async with slots:
                start = time.perf_counter()
                try:
                    answers[i] = (await call([texts[i]]))[0]
                except Exception as e:  # counted: a failure is a result here
                    failures.append(f"{type(e).__name__}: {e}")
                seconds[i] = time.perf_counter() - start

        await asyncio.gather(*(one(i) for i in range(len(texts))))
    return seconds, answers, failures


def _latency(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"mean_ms": round(float(ms.mean()), 2), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def _compare(a: list, b: list) -> dict:
    """Two runs' catalog answers: labels equal, and how far the numbers are (the CPU configs' INT8 graphs
    quantise activations per batch, so a row's numbers move slightly with the batch it was served in)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return {"rows": len(pairs),
            "same_label": sum((x.tag.path, x.tag.brand) == (y.tag.path, y.tag.brand) for x, y in pairs),
            "max_confidence_diff": round(max(abs(x.tag.confidence - y.tag.confidence) for x, y in pairs), 6),
            "max_price_rel_diff": round(max(abs(x.price.price - y.price.price) / max(y.price.price, 1e-6)
                                            for x, y in pairs), 6)}


def cache(repo: Path, work: Path, titles: list[str], concurrency: int = 4) -> dict:
    """The title stream through the catalog model with the cache (64 MB) and without it."""
    out = {"requests": len(titles), "unique_titles": len(set(titles)), "concurrency": concurrency}
    answers = {}
    for name, mb in (("with_cache", 64), ("without_cache", 0)):
        with TritonServer(repo, log_file=work / f"cache-{name}.log", cache_mb=mb) as server:
            seconds, rows, failures = asyncio.run(_send(server.grpc_url, titles, "catalog", concurrency))
            time.sleep(2.5)  # Triton refreshes its own counters every 2 s
            hits = {m: _metric(server, "nv_cache_num_hits_per_model", model=m) for m in ("catalog", "tagger", "price")}
        answers[name] = rows
        out[name] = {**_latency(seconds), "failures": len(failures), "wall_s": round(sum(seconds) / concurrency, 1),
                     "hit_rate": {m: round(h / len(titles), 4) for m, h in hits.items()}}
    out["answers"] = _compare(answers["with_cache"], answers["without_cache"])
    repeats = [i for i, t in enumerate(titles) if t in titles[:i]]  # a hit returns what the first request got
    first = {t: i for i, t in reversed(list(enumerate(titles)))}
    out["repeats_equal_their_first_answer"] = sum(
        (answers["with_cache"][i].tag, answers["with_cache"][i].price)
        == (answers["with_cache"][first[titles[i]]].tag, answers["with_cache"][first[titles[i]]].price)
        for i in repeats if answers["with_cache"][i] is not None)
    out["repeats"] = len(repeats)
    out["ideal_hit_rate"] = round(1 - out["unique_titles"] / len(titles), 4)
    return out


def metrics_overhead(exports: dict[str, Path], work: Path, titles: list[str], rounds: int = 3) -> dict:
    """Batch-1 tagger latency with the shelfml_ metrics on and off: two servers side by side, each title sent to
    both one after the other (the order alternating), so both see the same moment of a noisy shared host; the
    overhead is the median of the paired differences over the median latency without metrics."""
    from shelfml.client.client import ShelfmlClient

    unique = list(dict.fromkeys(titles))
    servers = {}
    for name, on in (("on", True), ("off", False)):
        repo = work / f"metrics-{name}"
        build_repository(repo, **exports, force=True, monitoring=Monitoring(metrics=on))
        servers[name] = TritonServer(repo, log_file=work / f"metrics-{name}.log", cache_mb=0).start()
    clients = {name: ShelfmlClient(server.grpc_url, retries=0) for name, server in servers.items()}
    try:
        for client in clients.values():  # warm both before timing
            client.tag(unique[:50])
        pairs = []
        for r in range(rounds):
            for i, title in enumerate(unique):
                ms = {}
                for name in (("on", "off") if (i + r) % 2 == 0 else ("off", "on")):
                    start = time.perf_counter()
                    clients[name].tag([f"{title} ({r})"])  # a new text every round: nothing cached anywhere
                    ms[name] = (time.perf_counter() - start) * 1000
                pairs.append((ms["on"], ms["off"]))
    finally:
        for name in servers:
            clients[name].close()
            servers[name].stop()
    on, off = np.array(pairs).T
    overhead = float(np.median(on - off) / np.median(off))
    return {"requests": len(pairs), "rounds": rounds,
            "median_ms": {"on": round(float(np.median(on)), 3), "off": round(float(np.median(off)), 3)},
            "median_paired_difference_ms": round(float(np.median(on - off)), 3),
            "overhead": round(overhead, 4), "goal": METRICS_OVERHEAD_GOAL,
            "passed": bool(overhead < METRICS_OVERHEAD_GOAL)}


def rollout(repo: Path, work: Path, tagger_export: Path, titles: list[str], concurrency: int = 4) -> dict:
    """Catalog requests at ``concurrency`` in flight while a tagger version is added and loaded, then rolled back."""
    events, loads, done = {}, {}, threading.Event()
    result: dict = {}

    def change() -> None:
        time.sleep(2)
        events["added"] = add_version(repo, "tagger", tagger_export)
        start = time.perf_counter()
        server.load_models(models_to_load(repo, "tagger"))
        loads["add_s"] = round(time.perf_counter() - start, 2)
        time.sleep(2)
        events["rolled_back_to"] = rollback(repo, "tagger")
        start = time.perf_counter()
        server.load_models(models_to_load(repo, "tagger"))
        loads["rollback_s"] = round(time.perf_counter() - start, 2)
        done.set()

    with TritonServer(repo, log_file=work / "rollout.log") as server:
        thread = threading.Thread(target=change)
        thread.start()
        stream = list(titles)
        while True:  # keep the stream going until both changes are loaded
            seconds, rows, failures = asyncio.run(_send(server.grpc_url, stream, "catalog", concurrency))
            result.setdefault("failures", []).extend(failures)
            result.setdefault("versions", []).extend(r.tag.model_version for r in rows if r)
            result.setdefault("seconds", []).extend(seconds)
            if done.is_set():
                break
        thread.join()
    versions = result["versions"]
    return {"requests": len(versions) + len(result["failures"]), "failed": len(result["failures"]),
            "failures": result["failures"][:5], "versions_seen": sorted(set(versions)),
            "answered_by": {str(v): versions.count(v) for v in sorted(set(versions))}, "last_version": versions[-1],
            "load_s": loads, "latency": _latency(result["seconds"]), **events, "passed": not result["failures"]}


def _gauge(prom: PrometheusProcess, expr: str, deadline_s: float = 20.0) -> float | None:
    """The value of ``expr`` once Prometheus has scraped a new one (polls until it is there)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = prom.query(expr)["result"]
        if result:
            return float(result[0]["value"][1])
        time.sleep(0.5)
    return None


def screenshot(url: str, png: Path, width: int = 1400, height: int = 800) -> bool:
    """A headless Chromium screenshot of ``url`` (False when no Chromium is installed)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return False
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", "--virtual-time-budget=8000", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=120)
    return png.is_file()


def drift(exports: dict[str, Path], work: Path, normal: list[str], skewed: list[str], png: Path | None,
          window: int = 200) -> dict:
    """The drift gauge through a real Prometheus: the training mix, then one category only."""
    if find_binary("prometheus") is None:
        return {"skipped": "no prometheus binary (apt-get install prometheus)"}
    import urllib.parse

    repo = work / "drift-repo"
    build_repository(repo, **exports, force=True, monitoring=Monitoring(drift_window=window, response_cache=False))
    expr = 'max by (model, feature) (shelfml_drift_jsd{model="tagger"})'
    with TritonServer(repo, log_file=work / "drift.log", cache_mb=0) as server, PrometheusProcess(
            scrape_config_for(f"{server.local_host}:{server.metrics_port}"), {"alerts.yml": rules_for_test("30s")},
            work / "prometheus") as prom:
        asyncio.run(_send(server.grpc_url, normal[: 2 * window], "tag", 4))
        time.sleep(3)
        before = _gauge(prom, expr)
        asyncio.run(_send(server.grpc_url, skewed[: 2 * window], "tag", 4))
        time.sleep(3)
        after = _gauge(prom, expr)
        time.sleep(3)
        state = [a["state"] for a in prom.alerts() if a["labels"]["alertname"] == "ShelfmlDrift"]
        shot = png is not None and screenshot(f"{prom.url}/graph?" + urllib.parse.urlencode(
            {"g0.expr": "shelfml_drift_jsd", "g0.tab": "0", "g0.range_input": "2m"}), png)
    return {"window_rows": window, "normal_rows": len(normal[: 2 * window]), "skewed_rows": len(skewed[: 2 * window]),
            "jsd_training_mix": before, "jsd_one_category": after, "alert_state": state[0] if state else "inactive",
            "screenshot": str(png) if shot else None}


def run_operations(exports: dict[str, Path], out: Path, titles: list[str], source: str,
                   drift_streams: tuple[list[str], list[str]], png: Path | None = None) -> dict:
    """Every section; writes OUT/operations.json and returns it. ``drift_streams``: the tagger's own catalog, and
    its rarest top-level category's products."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    repo = work / "repo"
    build_repository(repo, **exports, force=True, monitoring=Monitoring(response_cache=True))
    results: dict = {"stream": {"source": source, "requests": len(titles)}}
    sections = {"cache": lambda: cache(repo, work, titles),
                "metrics_overhead": lambda: metrics_overhead(exports, work, titles[:400]),
                "rollout": lambda: rollout(repo, work, exports["tagger"], titles[:400]),
                "drift": lambda: drift(exports, work, *drift_streams, png)}
    for name, run in sections.items():
        results[name] = run()
        (out / "operations.json").write_text(json.dumps(results, indent=2), encoding="utf-8")  # after each one
    return results


def table(r: dict) -> list[str]:
    """The README's rows."""
    c, m, o = r["cache"], r["metrics_overhead"], r["rollout"]
    return [
        "| measurement | value |", "|---|---|",
        f"| stream | {r['stream']['requests']} titles of {r['stream']['source']}, {c['unique_titles']} distinct "
        f"(ideal hit rate {c['ideal_hit_rate']:.1%}) |",
        f"| catalog hit rate (catalog / tagger / price) | {c['with_cache']['hit_rate']['catalog']:.1%} / "
        f"{c['with_cache']['hit_rate']['tagger']:.1%} / {c['with_cache']['hit_rate']['price']:.1%} |",
        f"| catalog latency with / without cache (mean, p50, p95 ms, {c['concurrency']} in flight) | "
        f"{c['with_cache']['mean_ms']} / {c['without_cache']['mean_ms']}; {c['with_cache']['p50_ms']} / "
        f"{c['without_cache']['p50_ms']}; {c['with_cache']['p95_ms']} / {c['without_cache']['p95_ms']} |",
        f"| answers with and without cache | same label for {c['answers']['same_label']} of {c['answers']['rows']}; "
        f"confidence within {c['answers']['max_confidence_diff']}, price within "
        f"{c['answers']['max_price_rel_diff']:.2%} (INT8 activations are quantised per batch) |",
        f"| shelfml_ metrics overhead (tagger, batch 1, {m['requests']} paired requests) | {m['overhead']:+.2%} "
        f"(median {m['median_ms']['on']} vs {m['median_ms']['off']} ms; goal < 3%) |",
        f"| requests failed during roll-out and roll-back | {o['failed']} of {o['requests']} (versions answering: "
        f"{o['answered_by']}; loads {o['load_s']['add_s']} s and {o['load_s']['rollback_s']} s) |",
    ] + ([f"| drift gauge (JSD, last {d['window_rows']} rows): the training mix / one category only | "
          f"{d['jsd_training_mix']:.3f} / {d['jsd_one_category']:.3f} (ShelfmlDrift: {d['alert_state']}) |"]
         if (d := r["drift"]).get("jsd_one_category") is not None else [])
