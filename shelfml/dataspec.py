"""What a catalog is asked to be, without loading anything (no pandas): the column mapping every manifest
records, the data error, and the targets a family learns (read by :mod:`shelfml.data`)."""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """A data source that cannot be used as asked; the message names the input and the problem."""


LEVELS, PRICE = "levels", "price"  # what a family learns from a catalog (``Family.target``)


@dataclass
class DataSpec:
    """Where the catalog comes from and how its columns map (recorded in every manifest)."""

    source: str = "synthetic"  # "synthetic", "flipkart", or the path of a table (.csv, .csv.gz or .xlsx)
    text_col: str | None = None  # title column (CSV)
    levels: list[str] | None = None  # 2-4 label level columns, top first (CSV)
    path_col: str | None = None  # or: one column holding the whole path (CSV), split on path_sep
    path_sep: str = ">"
    brand_col: str | None = None
    price_col: str | None = None
    image_col: str | None = None
    desc_col: str | None = None
    encoding: str = "utf-8"
    skip_rows: int = 0  # lines (CSV) or sheet rows (.xlsx) above the header
    allow_short_paths: bool = False  # keep paths that stop early (>= 2 levels) as valid shorter paths
    price_range: str = "lower"  # a price written as a range ("$5-$9"): its lower bound, or "refuse" the row
    min_depth: int = 4  # Flipkart: keep rows whose category tree has at least this depth
    synthetic_rows: int = 4000
    synthetic_seed: int = 0
    limit: int | None = None  # keep the first N usable rows

    @classmethod
    def from_dict(cls, data: dict) -> "DataSpec":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def bom_tolerant(encoding: str) -> str:
    """The codec to read a text file named ``encoding`` with: UTF-8 drops a leading byte-order mark."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
