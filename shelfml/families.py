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
    service: GraphSpec  # the served python model's contract
    model_source: str  # its Triton model.py, in model_repository/models/
    leaves: dict[str, str]  # export.json graph key -> the service's parameter naming that leaf model
    exporter: str  # "module:Class" of the export hooks (torch side)
    asset_dirs: tuple[str, ...] = field(default=())  # checkpoint sub-folders the runtime needs

    def export_hooks(self):
        """The family's export hooks (imports torch)."""
        module, name = self.exporter.split(":")
        return getattr(importlib.import_module(module), name)()


FAMILIES: dict[str, Family] = {
    "tagger": Family("tagger", TAGGER_SERVICE, "tagger.py",
                     {"encoder": "encoder_model", "decoder": "decoder_model"}, "shelfml.tagger.export:TaggerExport"),
    "price": Family("price", PRICE_SERVICE, "price.py", {"model": "regressor_model"},
                    "shelfml.price.export:PriceExport", asset_dirs=("encoder", "vision")),
}


def family(task: str) -> Family:
    """The family of ``task``; UnknownTaskError listing the known ones."""
    if task not in FAMILIES:
        raise UnknownTaskError(f"unknown task {task!r}; known tasks: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[task]
