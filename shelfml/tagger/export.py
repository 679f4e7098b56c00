"""The tagger's hooks for the generic export template (:mod:`shelfml.export.exporter`): load the eager
model, export its graphs, wrap sessions as a step factory, and score parity end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shelfml.contract import GraphSpec, ShapeRanges
from shelfml.metrics import tagger_metrics
from shelfml.parity import ParitySample
from shelfml.tagger.contract import tagger_ranges
from shelfml.tagger.model import eager_step_factory
from shelfml.tagger.onnx import export_t5
from shelfml.tagger.predict import Tagger
from shelfml.tagger.runners import OrtT5


class TaggerExport:
    int8_metric = ("item accuracy", "points lost")

    def load(self, ckpt: Path) -> Tagger:
        return Tagger.load(ckpt)

    def export_graphs(self, tagger: Tagger, out: Path, opset: int) -> dict[str, GraphSpec]:
        return export_t5(tagger.model, out, opset)

    def retrieval(self, tagger: Tagger):
        """(retriever, k) of a tagger trained with retrieval, else None."""
        return None if tagger.enricher is None else (tagger.enricher.retriever, tagger.enricher.format.k)

    def runner(self, sessions: dict) -> OrtT5:
        return OrtT5(sessions["encoder"], sessions["decoder"])

    def parity(self, tagger: Tagger, runners: dict[str, OrtT5], sample: ParitySample, batch_size: int
               ) -> tuple[dict, float]:
        """Per runner: logits and greedy tokens step by step, constrained agreement and item accuracy against
        eager; returns (parity, INT8's item-accuracy loss in points)."""
        from shelfml.export.exporter import step_parity

        texts, gold = sample.inputs, sample.labels
        eager = tagger.predict(texts, batch_size)
        scores = {"eager": tagger_metrics(gold, [p.label for p in eager], tagger.taxonomy)["item_accuracy"]}
        parity: dict = {}
        for name, runner in runners.items():
            logits = step_parity(eager_step_factory(tagger.model), runner.make_step, *tagger.encode(texts[:16]))
            preds = tagger.predict(texts, batch_size, make_step=runner.make_step)
            scores[name] = tagger_metrics(gold, [p.label for p in preds], tagger.taxonomy)["item_accuracy"]
            parity[name] = {**logits, "rows": len(texts),
                            "constrained_agreement": float(np.mean([a.label == b.label for a, b in zip(eager, preds)])),
                            "item_accuracy": round(scores[name], 6),
                            "item_accuracy_delta_points": round(100 * (scores[name] - scores["eager"]), 3)}
        parity["eager"] = {"item_accuracy": round(scores["eager"], 6)}
        loss = -parity["onnx-int8"]["item_accuracy_delta_points"] if "onnx-int8" in parity else 0.0
        return parity, loss

    @staticmethod
    def fp32_failures(parity: dict, specs: dict[str, GraphSpec]) -> list[str]:
        """FP32 against eager: logits within the decoder contract's ``atol``, the same greedy tokens and the
        same constrained labels."""
        failures, atol = [], specs["decoder"].atol
        if parity["max_abs_logit_diff"] > atol:
            failures.append(f"max logit difference {parity['max_abs_logit_diff']:.3g} > atol {atol:g}")
        if not parity["greedy_tokens_identical"]:
            failures.append("greedy tokens differ from eager")
        if parity["constrained_agreement"] < 1.0:
            failures.append(f"constrained labels agree with eager on {parity['constrained_agreement']:.2%} of rows")
        return failures

    def ranges(self, tagger: Tagger) -> ShapeRanges:
        return tagger_ranges(tagger.max_input_tokens, tagger.max_new_tokens)

    def extra(self, tagger: Tagger) -> dict:
        return {"decode": {"max_input_tokens": tagger.max_input_tokens, "max_new_tokens": tagger.max_new_tokens,
                           "brand_mode": tagger.constraint.brand_mode}}
