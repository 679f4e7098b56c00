"""The price model's hooks for the generic export template (:mod:`shelfml.export.exporter`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shelfml.contract import GraphSpec, ShapeRanges
from shelfml.metrics import smape
from shelfml.parity import ParitySample
from shelfml.price.contract import price_ranges
from shelfml.price.onnx import export_price
from shelfml.price.regressor import PriceRegressor
from shelfml.price.runners import OrtPrice


class PriceExport:
    int8_metric = ("SMAPE", "points added")

    def load(self, ckpt: Path) -> PriceRegressor:
        return PriceRegressor.load(ckpt)

    def export_graphs(self, regressor: PriceRegressor, out: Path, opset: int) -> dict[str, GraphSpec]:
        return export_price(regressor.model, out, opset)

    def retrieval(self, regressor: PriceRegressor):
        return None if regressor.retriever is None else (regressor.retriever, regressor.cfg.neighbours)

    def runner(self, sessions: dict) -> OrtPrice:
        return OrtPrice(sessions["model"])

    def parity(self, regressor: PriceRegressor, runners: dict[str, OrtPrice], sample: ParitySample, batch_size: int
               ) -> tuple[dict, float]:
        """Per runner: price differences and SMAPE against eager; returns (parity, INT8's SMAPE points added)."""
        texts, images, gold = sample.inputs, sample.images, sample.prices
        neighbours = regressor.neighbour_features(texts) if regressor.retriever is not None else None
        eager = regressor.predict(texts, images, batch_size, neighbour_features=neighbours)
        parity: dict = {"eager": {"smape": round(smape(gold, eager), 4)}}
        for name, runner in runners.items():
            pred = regressor.predict(texts, images, batch_size, run=runner, neighbour_features=neighbours)
            rel = np.abs(pred - eager) / np.maximum(np.abs(eager), 1e-6)
            parity[name] = {"rows": len(texts), "max_abs_price_diff": float(np.abs(pred - eager).max()),
                            "max_rel_price_diff": float(rel.max()), "median_rel_price_diff": float(np.median(rel)),
                            "smape": round(smape(gold, pred), 4),
                            "smape_delta_points": round(smape(gold, pred) - smape(gold, eager), 4),
                            "smape_vs_eager": round(smape(eager, pred), 4)}
        loss = parity["onnx-int8"]["smape_delta_points"] if "onnx-int8" in parity else 0.0
        return parity, loss

    @staticmethod
    def fp32_failures(parity: dict, specs: dict[str, GraphSpec]) -> list[str]:
        """FP32 against eager: every price within the graph contract's ``atol`` read as a relative tolerance
        (the graph ends in the price itself, whose scale spans orders of magnitude)."""
        atol = specs["model"].atol
        if parity["max_rel_price_diff"] > atol:
            return [f"max relative price difference {parity['max_rel_price_diff']:.3g} > {atol:g}"]
        return []

    def ranges(self, regressor: PriceRegressor) -> ShapeRanges:
        return price_ranges(regressor.cfg.max_length)

    def extra(self, regressor: PriceRegressor) -> dict:
        return {"model": regressor.cfg.to_dict()}
