"""The served models' Prometheus metrics, through the Triton python backend's custom metrics (``pb_utils``):
they appear on the server's metrics endpoint beside Triton's own ``nv_*`` metrics, every name prefixed
``shelfml_`` and labelled with the model and its version.

- :class:`ServedMetrics` (every python model): requests and rows by outcome, seconds per ``execute()`` stage.
- :class:`TaggerMetrics` / :class:`PriceMetrics`: what was predicted (top-level categories, abstentions, known
  vs copied brands, calibrated confidence per level, prices, input length) and the drift of the served mix from
  the training split's (:mod:`shelfml.drift`), the taxonomy's hash and the version serving.

Counted in ``execute()``: a request answered from Triton's response cache never reaches the model (those are in
Triton's ``nv_cache_num_hits_per_model``), so the prediction metrics and the drift window see computed rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shelfml.drift import DRIFT_WINDOW, DriftWindow

OUTCOMES = ("ok", "invalid", "error", "cancelled")
STAGES = ("parse", "infer", "respond")
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
PROBABILITY_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
PRICE_BUCKETS = [float(b) for b in np.logspace(0, 6, 13)]  # 1 .. 1e6 in the catalog's currency, half decades
CHAR_BUCKETS = [8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]


def _family(pb_utils, kind: str, name: str, description: str):
    family = pb_utils.MetricFamily
    return family(name=name, description=description, kind=getattr(family, kind))


class ServedMetrics:
    """Requests by outcome (ok, invalid, error, cancelled), rows by outcome, and per-stage latency of one served
    model version. Requests the server refuses before the model never reach it: deadline refusals in the queue
    are in Triton's ``nv_inference_request_failure{reason="REJECTED"}``; queue-full refusals are in no server
    metric (measured with Triton 2.51)."""

    def __init__(self, pb_utils, model: str, version: str = "1") -> None:
        labels = {"model": model, "version": str(version)}
        requests = _family(pb_utils, "COUNTER", "shelfml_requests_total", "requests answered by a shelfml python "
                           "model, by outcome")
        rows = _family(pb_utils, "COUNTER", "shelfml_rows_total", "rows (products) answered, by outcome")
        latency = _family(pb_utils, "HISTOGRAM", "shelfml_stage_seconds", "seconds per execute() stage")
        info = _family(pb_utils, "GAUGE", "shelfml_model_version_info", "the model version loaded (value 1)")
        self.requests = {o: requests.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self.rows = {o: rows.Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self.latency = {s: latency.Metric(labels={**labels, "stage": s}, buckets=LATENCY_BUCKETS) for s in STAGES}
        self.info = info.Metric(labels=labels)
        self.info.set(1)
        self._families = (requests, rows, latency, info)  # kept alive with their metrics

    def count(self, outcomes: Sequence[str], rows: Sequence[int], seconds: Sequence[float]) -> None:
        """One ``execute()``: each request's outcome and rows, and the seconds of each of :data:`STAGES`."""
        for outcome, n in zip(outcomes, rows):
            self.requests[outcome].increment(1)
            if n:
                self.rows[outcome].increment(n)
        for stage, s in zip(STAGES, seconds):
            self.latency[stage].observe(s)


class PredictionMetrics:
    """What every prediction model exports: input length, the drift gauge over the last ``window`` rows
    (when the checkpoint holds a training reference) and the taxonomy's hash (when it has a taxonomy)."""

    def __init__(self, pb_utils, model: str, version: str, reference: dict | None = None,
                 window: int = DRIFT_WINDOW, taxonomy_sha256: str | None = None) -> None:
        self.pb_utils, self.labels = pb_utils, {"model": model, "version": str(version)}
        self._families = []
        self.chars = self.histogram("shelfml_input_chars", "characters per input text", CHAR_BUCKETS)
        self.window = DriftWindow(reference, window) if reference else None
        if self.window is not None:
            feature = {"feature": self.window.feature}
            self.drift = self.metric("GAUGE", "shelfml_drift_jsd", "Jensen-Shannon divergence (bits) of the last "
                                     "served rows from the training split", **feature)
            self.window_rows = self.metric("GAUGE", "shelfml_drift_window_rows", "rows in the drift window",
                                           **feature)
        if taxonomy_sha256:
            self.metric("GAUGE", "shelfml_taxonomy_info", "the taxonomy served (value 1)",
                        sha256=taxonomy_sha256).set(1)

    def metric(self, kind: str, name: str, description: str, buckets: list | None = None, **labels: str):
        family = _family(self.pb_utils, kind, name, description)
        self._families.append(family)
        extra = {"buckets": buckets} if buckets else {}
        return family.Metric(labels={**self.labels, **labels}, **extra)

    def histogram(self, name: str, description: str, buckets: list, **labels: str):
        return self.metric("HISTOGRAM", name, description, buckets, **labels)

    def observe_inputs(self, texts: Sequence[str], drift_values: Sequence) -> None:
        for text in texts:
            self.chars.observe(len(text))
        if self.window is not None:
            self.window.add(drift_values)
            self.window_rows.set(self.window.rows)
            value = self.window.divergence()
            if value is not None:
                self.drift.set(value)


class TaggerMetrics(PredictionMetrics):
    """+ rows per predicted top-level category, abstentions, brand source (known, copied from the text, none)
    and the calibrated probability of each level."""

    def __init__(self, pb_utils, model: str, version: str, manifest: dict, window: int = DRIFT_WINDOW) -> None:
        from shelfml.labels import Taxonomy

        taxonomy = Taxonomy.from_dict(manifest["taxonomy"])
        reference = (manifest.get("drift") or {}).get("top_level")
        super().__init__(pb_utils, model, version, reference, window, taxonomy.sha256())
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
        for top in tops:
            if top in self.top_level:
                self.top_level[top].increment(1)
        if int(outputs["abstain"].sum()):
            self.abstain.increment(int(outputs["abstain"].sum()))
        for raw in outputs["brand"][:, 0]:
            brand = raw.decode()
            self.brand["none" if not brand else "known" if brand in self.brands else "copied"].increment(1)
        for level, histogram in enumerate(self.confidence):
            for p in outputs["level_probability"][:, level]:
                if p == p:  # NaN: a short path has no probability at this level
                    histogram.observe(float(p))


class PriceMetrics(PredictionMetrics):
    """+ the predicted prices."""

    def __init__(self, pb_utils, model: str, version: str, manifest: dict, window: int = DRIFT_WINDOW) -> None:
        super().__init__(pb_utils, model, version, (manifest.get("drift") or {}).get("price"), window)
        self.prices = self.histogram("shelfml_price", "predicted price", PRICE_BUCKETS)

    def observe(self, texts: Sequence[str], outputs: dict[str, np.ndarray]) -> None:
        prices = outputs["price"][:, 0]
        self.observe_inputs(texts, prices)
        for p in prices:
            self.prices.observe(float(p))
