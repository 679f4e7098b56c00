"""The served models' Prometheus metrics, through the Triton python backend's custom metrics (``pb_utils``):
they appear on the server's metrics endpoint beside Triton's own ``nv_*`` metrics, every name prefixed
``shelfml_`` and labelled with the model and its version.

- :class:`ServedMetrics` (every python model): requests and rows by outcome, seconds per ``execute()`` stage.
- :class:`TaggerMetrics` / :class:`PriceMetrics`: what was predicted (top-level categories, abstentions, known
  vs copied brands, calibrated confidence per level, prices, input length) and the drift of the served mix from
  the training split's (:mod:`shelfml.drift`), the taxonomy's hash and the version serving.

Counted in ``execute()``: a request answered from Triton's response cache never reaches the model (those are in
Triton's ``nv_cache_num_hits_per_model``), so the prediction metrics and the drift window see computed rows.
Every update goes through a :class:`Publisher`, off the request path.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from typing import Sequence

import numpy as np

from shelfml.drift import DRIFT_WINDOW, DriftWindow

OUTCOMES = ("ok", "invalid", "error", "cancelled")
STAGES = ("parse", "infer", "respond")
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
PROBABILITY_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
PRICE_BUCKETS = [float(b) for b in np.logspace(0, 6, 13)]  # 1 .. 1e6 in the catalog's currency, half decades
CHAR_BUCKETS = [8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
PUBLISH_S = 0.5  # how often the recorded updates reach the server's metrics


class Histogram:
    """A Prometheus histogram binned here and published as counters (``NAME_bucket{le}``, ``NAME_sum``,
    ``NAME_count``: what ``histogram_quantile`` reads), so publishing costs one call per bucket that moved,
    whatever the traffic (the python backend's own histogram takes one call per sample)."""

    def __init__(self, metric, name: str, description: str, buckets: list, labels: dict) -> None:
        self.edges = [float(b) for b in buckets] + [math.inf]
        self.buckets = [metric("COUNTER", f"{name}_bucket", description, le="+Inf" if b == math.inf else str(b),
                               **labels) for b in self.edges]
        self.sum = metric("COUNTER", f"{name}_sum", description, **labels)
        self.count = metric("COUNTER", f"{name}_count", description, **labels)


class Publisher:
    """Metric updates off the request path: ``execute()`` records them in memory (counter increments summed,
    the last gauge value, histogram bins), and a daemon thread hands them to the python backend every
    :data:`PUBLISH_S` (each pb_utils metric call is a message to the server process: measured, a dozen of them
    per request cost 5-7% of the tagger's batch-1 latency)."""

    def __init__(self, interval_s: float = PUBLISH_S) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, list] = {}
        self._gauges: dict[int, tuple] = {}
        self._samples: dict[int, list] = {}  # histogram -> [it, bins, sum, count]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="shelfml-metrics", daemon=True)
        self._thread.start()

    def increment(self, metric, n: float = 1) -> None:
        with self._lock:
            self._counts.setdefault(id(metric), [metric, 0])[1] += n

    def set(self, metric, value: float) -> None:
        with self._lock:
            self._gauges[id(metric)] = (metric, value)

    def observe(self, histogram: Histogram, values) -> None:
        """Bin ``values`` (plain python: a request's few values cost microseconds, numpy's calls cost more)."""
        edges = histogram.edges
        with self._lock:
            entry = self._samples.get(id(histogram))
            if entry is None:
                entry = self._samples[id(histogram)] = [histogram, [0] * len(edges), 0.0, 0]
            bins = entry[1]
            for value in values:
                value = float(value)
                bins[bisect.bisect_left(edges, value)] += 1
                entry[2] += value
                entry[3] += 1

    def flush(self) -> None:
        with self._lock:
            counts, gauges, samples = self._counts, self._gauges, self._samples
            self._counts, self._gauges, self._samples = {}, {}, {}
        for metric, n in counts.values():
            metric.increment(n)
        for metric, value in gauges.values():
            metric.set(value)
        for histogram, bins, total, n in samples.values():
            for bucket, cumulative in zip(histogram.buckets, itertools.accumulate(bins)):  # le: all at or below
                if cumulative:
                    bucket.increment(cumulative)
            histogram.sum.increment(total)
            histogram.count.increment(n)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.flush()

    def close(self) -> None:
        """Stop the thread and publish what is left (the model's ``finalize``)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def _family(pb_utils, kind: str, name: str, description: str):
    family = pb_utils.MetricFamily
    return family(name=name, description=description, kind=getattr(family, kind))


class Families:
    """One pb_utils MetricFamily per name (kept alive with its metrics), metrics made with fixed labels."""

    def __init__(self, pb_utils, labels: dict) -> None:
        self.pb_utils, self.labels, self._by_name = pb_utils, labels, {}

    def __call__(self, kind: str, name: str, description: str, **labels: str):
        if name not in self._by_name:
            self._by_name[name] = _family(self.pb_utils, kind, name, description)
        return self._by_name[name].Metric(labels={**self.labels, **labels})


class ServedMetrics:
    """Requests by outcome (ok, invalid, error, cancelled), rows by outcome, and per-stage latency of one served
    model version. Requests the server refuses before the model never reach it: deadline refusals in the queue
    are in Triton's ``nv_inference_request_failure{reason="REJECTED"}``; queue-full refusals are in no server
    metric (measured with Triton 2.51)."""

    def __init__(self, pb_utils, model: str, version: str = "1", publisher: Publisher | None = None) -> None:
        self.publisher = publisher or Publisher()
        labels = {"model": model, "version": str(version)}
        requests = _family(pb_utils, "COUNTER", "shelfml_requests_total", "requests answered by a shelfml python "
                           "model, by outcome")
        rows = _family(pb_utils, "COUNTER", "shelfml_rows_total", "rows (products) answered, by outcome")
        info = _family(pb_utils, "GAUGE", "shelfml_model_version_info", "the model version loaded (value 1)")
        self.requests = {o: requests.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self.rows = {o: rows.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self._families = [requests, rows, info]  # kept alive with their metrics
        metric = Families(pb_utils, labels)
        self.latency = {s: Histogram(metric, "shelfml_stage_seconds", "seconds per execute() stage", LATENCY_BUCKETS,
                                     {"stage": s}) for s in STAGES}
        self._families.append(metric)
        self.info = info.Metric(labels=labels)
        self.info.set(1)

    def count(self, outcomes: Sequence[str], rows: Sequence[int], seconds: Sequence[float]) -> None:
        """One ``execute()``: each request's outcome and rows, and the seconds of each of :data:`STAGES`."""
        publish = self.publisher
        for outcome, n in zip(outcomes, rows):
            publish.increment(self.requests[outcome])
            if n:
                publish.increment(self.rows[outcome], n)
        for stage, s in zip(STAGES, seconds):
            publish.observe(self.latency[stage], [s])

    def close(self) -> None:
        self.publisher.close()


class PredictionMetrics:
    """What every prediction model exports: input length, the drift gauge over the last ``window`` rows
    (when the checkpoint holds a training reference) and the taxonomy's hash (when it has a taxonomy)."""

    def __init__(self, pb_utils, publisher: Publisher, model: str, version: str, reference: dict | None = None,
                 window: int = DRIFT_WINDOW, taxonomy_sha256: str | None = None) -> None:
        self.publish = publisher
        self.metric = Families(pb_utils, {"model": model, "version": str(version)})
        self.chars = self.histogram("shelfml_input_chars", "characters per input text", CHAR_BUCKETS)
        self.window = DriftWindow(reference, window) if reference else None
        self.drift = None  # created once the window is full: no 0 before there is a divergence to show
        self._divergence_at = -math.inf
        if self.window is not None:
            self.window_rows = self.metric("GAUGE", "shelfml_drift_window_rows", "rows in the drift window",
                                           feature=self.window.feature)
        if taxonomy_sha256:
            self.metric("GAUGE", "shelfml_taxonomy_info", "the taxonomy served (value 1)",
                        sha256=taxonomy_sha256).set(1)

    def histogram(self, name: str, description: str, buckets: list, **labels: str) -> Histogram:
        return Histogram(self.metric, name, description, buckets, labels)

    def observe_inputs(self, texts: Sequence[str], drift_values: Sequence) -> None:
        self.publish.observe(self.chars, [len(t) for t in texts])
        if self.window is not None:
            self.window.add(drift_values)
            self.publish.set(self.window_rows, self.window.rows)
            if time.monotonic() - self._divergence_at < PUBLISH_S / 2:  # computed at most twice per publish
                return
            self._divergence_at = time.monotonic()
            value = self.window.divergence()
            if value is not None:
                if self.drift is None:
                    self.drift = self.metric("GAUGE", "shelfml_drift_jsd", "Jensen-Shannon divergence (bits) of "
                                             "the last served rows from the training split",
                                             feature=self.window.feature)
                self.publish.set(self.drift, value)


class TaggerMetrics(PredictionMetrics):
    """+ rows per predicted top-level category, abstentions, brand source (known, copied from the text, none)
    and the calibrated probability of each level."""

    def __init__(self, pb_utils, publisher: Publisher, model: str, version: str, manifest: dict,
                 window: int = DRIFT_WINDOW) -> None:
        from shelfml.labels import Taxonomy

        taxonomy = Taxonomy.from_dict(manifest["taxonomy"])
        reference = (manifest.get("drift") or {}).get("top_level")
        super().__init__(pb_utils, publisher, model, version, reference, window, taxonomy.sha256())
        self.brands = set(taxonomy.brands)
        self.levels = taxonomy.levels
        top = sorted({p[0] for p in taxonomy.paths})
        self.top_level = {c: self.metric("COUNTER", "shelfml_top_level_total", "rows by predicted top-level "
                                         "category", category=c) for c in top}
        self.abstain = self.metric("COUNTER", "shelfml_abstain_total", "rows whose path is below its confidence "
                                   "threshold (to review)")
        self.brand = {s: self.metric("COUNTER", "shelfml_brand_source_total", "rows by where the brand came from",
                                     source=s) for s in ("known", "copied", "none")}
        self.confidence = [self.histogram("shelfml_confidence", "calibrated probability of the predicted path "
                                          "through each level", PROBABILITY_BUCKETS, level=name)
                           for name in self.levels]

    def observe(self, texts: Sequence[str], outputs: dict[str, np.ndarray]) -> None:
        from shelfml.labels import parse_path

        tops = [parse_path(p.decode())[0] if p else "" for p in outputs["path"][:, 0]]
        self.observe_inputs(texts, tops)
        publish = self.publish
        for top in tops:
            if top in self.top_level:
                publish.increment(self.top_level[top])
        abstained = int(np.count_nonzero(outputs["abstain"]))
        if abstained:
            publish.increment(self.abstain, abstained)
        for raw in outputs["brand"][:, 0]:
            brand = raw.decode()
            publish.increment(self.brand["none" if not brand else "known" if brand in self.brands else "copied"])
        for level, histogram in enumerate(self.confidence):
            probabilities = outputs["level_probability"][:, level].tolist()
            publish.observe(histogram, [p for p in probabilities if p == p])  # NaN: a short path stops above


class PriceMetrics(PredictionMetrics):
    """+ the predicted prices."""

    def __init__(self, pb_utils, publisher: Publisher, model: str, version: str, manifest: dict,
                 window: int = DRIFT_WINDOW) -> None:
        super().__init__(pb_utils, publisher, model, version, (manifest.get("drift") or {}).get("price"), window)
        self.prices = self.histogram("shelfml_price", "predicted price", PRICE_BUCKETS)

    def observe(self, texts: Sequence[str], outputs: dict[str, np.ndarray]) -> None:
        prices = outputs["price"][:, 0].tolist()
        self.observe_inputs(texts, prices)
        self.publish.observe(self.prices, prices)
