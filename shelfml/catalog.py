"""The served ``catalog`` model: one request (text, optional picture) -> the tagger's path, brand and per-level
confidence and the price model's price, with the versions that answered and each stage's time. Its contract,
and what it does without Triton: ``call`` is one request to a served model (a BLS request in the server).

It answers from the ``tagger`` and ``price`` models the server is serving (their newest loaded version), so a
version roll-out of either reaches it without reloading it, and their response caches serve it too.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfml.contract import BATCH, GraphSpec, TensorSpec
from shelfml.price.contract import PRICE_SERVICE
from shelfml.tagger.contract import TAGGER_SERVICE

TAGGER_FIELDS = ("path", "brand", "confidence", "level_probability", "backoff_path", "abstain")
PRICE_FIELDS = ("price", "has_image")
_by_name = {t.name: t for t in TAGGER_SERVICE.outputs + PRICE_SERVICE.outputs}

CATALOG_SERVICE = GraphSpec(
    name="catalog",
    inputs=PRICE_SERVICE.inputs,  # text, and the optional picture file's bytes
    outputs=tuple(_by_name[n] for n in TAGGER_FIELDS + PRICE_FIELDS)
    + (TensorSpec("tagger_version", "int64", (BATCH, 1)),  # the versions that answered
       TensorSpec("price_version", "int64", (BATCH, 1)),
       TensorSpec("tagger_ms", "float32", (BATCH, 1)),  # each stage's milliseconds for the batch the row was in
       TensorSpec("price_ms", "float32", (BATCH, 1))),
    optional=PRICE_SERVICE.optional,
)

Call = Callable[[str, dict[str, np.ndarray], Sequence[str]], dict[str, np.ndarray]]  # model, inputs, outputs


class CatalogService:
    """Both models for one batch, at the same time (two requests in flight: the server runs them in parallel)."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="catalog")

    def _timed(self, spec: GraphSpec, inputs: dict[str, np.ndarray]):
        """One model's answer, every output of its contract: Triton's response cache keys on the inputs, not the
        outputs asked for, so a response cached for this call must be whole for the next client."""
        start = time.perf_counter()
        result = self.call(spec.name, inputs, spec.output_names)
        return result, (time.perf_counter() - start) * 1000.0

    def run(self, texts: Sequence[str], pictures: Sequence[bytes]) -> dict[str, np.ndarray]:
        rows = len(texts)
        text = np.array([[t.encode()] for t in texts], dtype=object)
        image = np.array([[p] for p in pictures], dtype=object)
        tagger = self.pool.submit(self._timed, TAGGER_SERVICE, {"text": text})
        price = self.pool.submit(self._timed, PRICE_SERVICE, {"text": text, "image": image})
        (tags, tag_ms), (prices, price_ms) = tagger.result(), price.result()
        return {**{n: tags[n] for n in TAGGER_FIELDS}, **{n: prices[n] for n in PRICE_FIELDS},
                "tagger_version": tags["model_version"].reshape(rows, 1),
                "price_version": prices["model_version"].reshape(rows, 1),
                "tagger_ms": np.full((rows, 1), tag_ms, np.float32),
                "price_ms": np.full((rows, 1), price_ms, np.float32)}


def served_taxonomy_sha256(repo: Path, tagger: str = TAGGER_SERVICE.name) -> dict[str, str]:
    """Version -> the taxonomy hash of every version of the tagger on disk (what a catalog load checks)."""
    from shelfml.checkpoint import read_manifest
    from shelfml.labels import Taxonomy

    out = {}
    for folder in sorted(p for p in (Path(repo) / tagger).iterdir() if p.name.isdigit()):
        manifest = read_manifest(folder / "assets", task="tagger", weights=False)
        out[folder.name] = Taxonomy.from_dict(manifest["taxonomy"]).sha256()
    return out
