"""The registry of model families: a task name -> everything the generic stages need to know of it.

Each family owns its package (``shelfml/tagger/``, ``shelfml/price/``): contract, torch model, ONNX
wrappers, feeds, runners, served service. The stages (export, repository, serving) read a
:class:`Family` and never switch on the task name themselves. Torch-side hooks are named by module
path and imported only by the stage that runs them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from shelfml.contract import GraphSpec
from shelfml.price.contract import PRICE_SERVICE
from shelfml.tagger.contract import TAGGER_SERVICE


class UnknownTaskError(ValueError):
    """A task name no family is registered for."""


@dataclass(frozen=True)
class Family:
    task: str
    target: str  # what it learns from a catalog: shelfml.data.LEVELS or PRICE
    service: GraphSpec  # the served python model's contract
    model_source: str  # its Triton model.py, in model_repository/models/
    leaves: dict[str, str]  # export.json graph key -> the service's parameter naming that leaf model
    exporter: str  # "module:Class" of the export hooks (torch side)
    evaluate: str  # "module:function" scoring a checkpoint on a split (``shelfml evaluate``)
    predict: str  # "module:function" (ckpt, texts, batch_size, **options) -> JSON records (``shelfml predict``)
    baseline: str  # "module:function" (spec, split_seed) -> the TF-IDF baseline's test metrics
    bench: str  # "module:NAME" of its BenchProfile (``shelfml bench``)
    asset_dirs: tuple[str, ...] = field(default=())  # checkpoint sub-folders the runtime needs
    options: tuple[str, ...] = field(default=())  # family-only CLI options its evaluate/predict take
    serve_parameters: str | None = None  # "module:function" (assets, **options) -> its served model's parameters

    def hook(self, name: str):
        """One of the named hooks (``exporter`` is instantiated), imported only now."""
        module, attr = getattr(self, name).split(":")
        value = getattr(importlib.import_module(module), attr)
        return value() if name == "exporter" else value

    def export_hooks(self):
        """The family's export hooks (imports torch)."""
        return self.hook("exporter")


FAMILIES: dict[str, Family] = {
    "tagger": Family("tagger", "levels", TAGGER_SERVICE, "tagger.py", {"encoder": "encoder_model", "decoder": "decoder_model"},
                     exporter="shelfml.tagger.export:TaggerExport", evaluate="shelfml.evaluate:evaluate_tagger",
                     predict="shelfml.tagger.predict:predict_records",
                     baseline="shelfml.training.baseline:baseline_tagger",
                     bench="shelfml.benchmarks.profiles:TAGGER_BENCH", asset_dirs=("lexical",),
                     options=("brand_mode", "prior_weight", "prior_only", "top_k"),
                     serve_parameters="shelfml.tagger.service:served_parameters"),
    "price": Family("price", "price", PRICE_SERVICE, "price.py", {"model": "regressor_model"},
                    exporter="shelfml.price.export:PriceExport", evaluate="shelfml.evaluate:evaluate_price",
                    predict="shelfml.price.regressor:predict_records",
                    baseline="shelfml.training.baseline:baseline_price",
                    bench="shelfml.benchmarks.profiles:PRICE_BENCH", asset_dirs=("encoder", "vision", "wide")),
}


def family(task: str) -> Family:
    """The family of ``task``; UnknownTaskError listing the known ones."""
    if task not in FAMILIES:
        raise UnknownTaskError(f"unknown task {task!r}; known tasks: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[task]
