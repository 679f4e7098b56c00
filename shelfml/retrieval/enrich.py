"""The tagger's enrichment text: ``text || n1 ; n2 ; ...`` (:class:`EnrichFormat`, recorded in the
checkpoint), and the :class:`Enricher` that turns product texts into enriched model inputs."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Sequence

from shelfml.labels import BRAND_SEP, Label, format_path
from shelfml.retrieval.errors import RetrievalError
from shelfml.retrieval.index import Neighbour, Retriever

FIELDS = ("labels", "brands", "descriptions")
CONTEXT_SEP = " || "  # between the product text and its neighbours
NEIGHBOUR_SEP = " ; "  # between neighbours
DESC_SEP = " :: "  # before a neighbour's description


def _clean(text: str) -> str:
    """A neighbour field never contains the enrichment separators."""
    text = " ".join(str(text).split())
    return re.sub(r"\s*(\|\||;|::)\s*", ", ", text).strip(" ,")


@dataclass
class EnrichFormat:
    """How K neighbours are appended to the product text: ``text || n1 ; n2 ; ...``, each neighbour being
    ``a > b > c | brand :: description`` restricted to ``fields``. Recorded in the checkpoint manifest."""

    k: int
    fields: list[str] = field(default_factory=lambda: ["labels", "brands"])
    text_chars: int = 240  # the product text is cut here so the neighbours survive the token limit
    description_chars: int = 80
    version: int = 1

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in FIELDS]
        if bad or not self.fields:
            raise RetrievalError(f"retrieval fields {self.fields} must be a non-empty subset of {FIELDS}")
        if self.k < 1:
            raise RetrievalError(f"retrieval k must be at least 1, got {self.k}")

    def token_budget(self) -> int:
        """Input tokens the neighbours get on top of the product text's."""
        return self.k * (16 + (24 if "descriptions" in self.fields else 0))

    def to_dict(self) -> dict:
        return {**asdict(self), "context_sep": CONTEXT_SEP, "neighbour_sep": NEIGHBOUR_SEP, "desc_sep": DESC_SEP}

    @classmethod
    def from_dict(cls, data: dict) -> "EnrichFormat":
        if data.get("version") != 1:
            raise RetrievalError(f"enrichment format version {data.get('version')} is not supported (expected 1)")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def neighbour_text(self, label: Label | None, description: str = "") -> str:
        parts = []
        if "labels" in self.fields and label is not None:
            parts.append(format_path(_clean(v) for v in label.path))
        if "brands" in self.fields and label is not None:
            parts.append(BRAND_SEP.strip() + " " + _clean(label.brand) if parts else _clean(label.brand))
        text = " ".join(parts).strip()
        if "descriptions" in self.fields:
            text += DESC_SEP + _clean(description)[: self.description_chars].strip()
        return text

    def format(self, text: str, neighbours: Sequence[tuple[Label | None, str]]) -> str:
        body = NEIGHBOUR_SEP.join(self.neighbour_text(lab, desc) for lab, desc in neighbours)
        return " ".join(str(text).split())[: self.text_chars].strip() + CONTEXT_SEP + body


class Enricher:
    """Retriever + format: product texts -> enriched model inputs (cached per text)."""

    CACHE_ROWS = 200_000  # the cache starts afresh beyond this many texts

    def __init__(self, retriever: Retriever, fmt: EnrichFormat) -> None:
        self.retriever, self.format = retriever, fmt
        self._cache: dict[str, str] = {}

    def describe(self) -> dict:
        """What a checkpoint records: the format and the index it was trained against."""
        return {"format": self.format.to_dict(), "index": self.retriever.describe()}

    def neighbours_of(self, texts: Sequence[str], progress: bool = False) -> list[list[Neighbour]]:
        return self.retriever.search(texts, self.format.k, progress=progress)

    def render(self, texts: Sequence[str], neighbours: list[list[Neighbour]]) -> list[str]:
        m = self.retriever.metadata
        return [self.format.format(t, [(self.retriever.label(n.row), m.at[n.row, "description"]) for n in ns])
                for t, ns in zip(texts, neighbours)]

    def enrich(self, texts: Sequence[str], progress: bool = False) -> list[str]:
        """The model inputs for ``texts`` (queries; training rows go through :func:`enrich_training_rows`)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(todo) > self.CACHE_ROWS:
            self._cache.clear()
            todo = list(dict.fromkeys(texts))
        if todo:
            self._cache.update(zip(todo, self.render(todo, self.neighbours_of(todo, progress=progress))))
        return [self._cache[t] for t in texts]
