"""The one place that knows the label format.

A product's label is a category path of 2 to 4 levels plus a brand. As text it reads
``supergroup > group > module | brand``; as decoder targets it is tokenised field by field
and joined with separator tokens, so that every valid label has exactly one token sequence
and a prefix trie over those sequences constrains decoding (see :mod:`shelfml.decoding`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

LEVEL_SEP = " > "
BRAND_SEP = " | "
MIN_LEVELS, MAX_LEVELS = 2, 4
_FORBIDDEN = re.compile(r"\s*[>|]\s*")


@dataclass(frozen=True, order=True)
class Label:
    """A category path (one value per level) and a brand ("" when unknown)."""

    path: tuple[str, ...]
    brand: str = ""


def clean_value(value: object) -> str:
    """Normalise one label value: collapse whitespace; separators inside a value become '/'."""
    text = " ".join(str(value).split())
    return _FORBIDDEN.sub(" / ", text).strip(" /") if (">" in text or "|" in text) else text


def format_path(path: Iterable[str]) -> str:
    """``("a", "b", "c")`` -> ``"a > b > c"``."""
    return LEVEL_SEP.join(path)


def parse_path(text: str) -> tuple[str, ...]:
    """Inverse of :func:`format_path` (values stripped; empty text -> ``()``)."""
    return tuple(p.strip() for p in text.split(LEVEL_SEP.strip())) if text.strip() else ()


def format_target(label: Label) -> str:
    """``Label(("a", "b", "c"), "x")`` -> ``"a > b > c | x"``."""
    return format_path(label.path) + BRAND_SEP + label.brand


def parse_target(text: str) -> Label:
    """Inverse of :func:`format_target`; raises ValueError on a string that is not a label."""
    path_text, sep, brand = text.rpartition(BRAND_SEP.strip())
    if not sep:
        raise ValueError(f"not a label (no '{BRAND_SEP.strip()}' before the brand): {text!r}")
    path = parse_path(path_text)
    if not MIN_LEVELS <= len(path) <= MAX_LEVELS or not all(path):
        raise ValueError(f"not a label (expected {MIN_LEVELS}-{MAX_LEVELS} non-empty levels): {text!r}")
    return Label(path, brand.strip())


@dataclass
class Taxonomy:
    """The label space: level names, every valid category path, and the known brands. A path has one value per
    level, or stops early (at least 2 levels) in a catalog read with ``--allow-short-paths``."""

    levels: list[str]
    paths: list[tuple[str, ...]]
    brands: list[str]

    def __post_init__(self) -> None:
        assert MIN_LEVELS <= len(self.levels) <= MAX_LEVELS, f"2-4 levels expected, got {self.levels}"
        self.paths = sorted({tuple(p) for p in self.paths})
        self.brands = sorted(set(self.brands) - {""})
        bad = [p for p in self.paths if not MIN_LEVELS <= len(p) <= len(self.levels) or not all(p)]
        assert not bad, f"paths must have {MIN_LEVELS}-{len(self.levels)} non-empty levels, got {bad[:3]}"
        self._path_set = set(self.paths)

    @classmethod
    def from_labels(cls, levels: Sequence[str], labels: Iterable[Label]) -> "Taxonomy":
        labels = list(labels)
        return cls(list(levels), [lab.path for lab in labels], [lab.brand for lab in labels])

    def __contains__(self, path: tuple[str, ...]) -> bool:
        return tuple(path) in self._path_set

    def to_dict(self) -> dict:
        return {"levels": self.levels, "paths": [list(p) for p in self.paths], "brands": self.brands}

    def sha256(self) -> str:
        """The category tree's identity (levels and paths; not the brands, whose list grows): the served models
        that share a taxonomy compare it at load, and it is exposed as ``shelfml_taxonomy_info``."""
        tree = json.dumps({"levels": self.levels, "paths": [list(p) for p in self.paths]}, ensure_ascii=False)
        return hashlib.sha256(tree.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> "Taxonomy":
        return cls(list(data["levels"]), [tuple(p) for p in data["paths"]], list(data["brands"]))


class TaxonomyMismatch(ValueError):
    """Two served models that must share a taxonomy do not."""


def check_taxonomy(expected: str, found: dict[str, str]) -> None:
    """``found``: where -> the taxonomy hash there; TaxonomyMismatch naming both unless each is ``expected``."""
    for where, sha in found.items():
        if sha != expected:
            raise TaxonomyMismatch(f"{where} serves taxonomy {sha[:16]}, but this repository was built for taxonomy "
                                   f"{expected[:16]} (the tagger export it was built from): models sharing a taxonomy "
                                   "must serve the same one; build a new repository for a new taxonomy")


class TargetCodec:
    """Token ids of labels for one tokenizer: each field is tokenised alone, then joined with
    the ids of the separators, so label <-> ids is a bijection over the taxonomy."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id
        self.level_sep = self._ids(LEVEL_SEP.strip())
        self.brand_sep = self._ids(BRAND_SEP.strip())
        unk = tokenizer.unk_token_id
        if unk is not None and (unk in self.level_sep or unk in self.brand_sep):
            raise ValueError(f"the tokenizer has no token for the label separators '{LEVEL_SEP.strip()}' / "
                             f"'{BRAND_SEP.strip()}' (they map to {tokenizer.unk_token})")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def path_ids(self, path: Sequence[str]) -> list[int]:
        """Ids of the path followed by the brand separator (the part shared by all brands)."""
        ids: list[int] = []
        for i, value in enumerate(path):
            ids += (self.level_sep if i else []) + self._ids(value)
        return ids + self.brand_sep

    def level_ends(self, path: Sequence[str]) -> list[int]:
        """Per level, the number of target tokens up to and including the separator that closes it: the level is
        decided there (a value's tokens may begin another value's)."""
        ends, count = [], 0
        for i, value in enumerate(path):
            count += len(self._ids(value)) + len(self.level_sep if i < len(path) - 1 else self.brand_sep)
            ends.append(count)
        return ends

    def brand_ids(self, brand: str) -> list[int]:
        """Ids of the brand followed by end-of-sequence."""
        return self._ids(brand) + [self.eos_id]

    def brand_ids_many(self, brands: Sequence[str]) -> list[list[int]]:
        """:meth:`brand_ids` for many brands in one tokenizer call (the decode loop's copy mode tokenises every
        candidate span of every input, so this is on the serving path: the Rust tokenizer is called directly,
        without the transformers wrapper's per-row conversion, which cost more than the tokenisation itself)."""
        if not brands:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (python) tokenizer
            encoded = self.tokenizer(list(brands), add_special_tokens=False)["input_ids"]
            return [list(ids) + [self.eos_id] for ids in encoded]
        if backend.padding is not None:  # left set by the wrapper's last padded call
            backend.no_padding()
        if backend.truncation is not None:
            backend.no_truncation()
        return [e.ids + [self.eos_id] for e in backend.encode_batch(list(brands), add_special_tokens=False)]

    def encode(self, label: Label) -> list[int]:
        return self.path_ids(label.path) + self.brand_ids(label.brand)
