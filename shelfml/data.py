"""Catalog loading: the synthetic default, the Flipkart file, and any CSV through column mapping.

Every source becomes a :class:`Catalog`: one frame with columns ``text``, ``description``,
``level_1..level_k``, ``brand``, ``price`` and ``image``. Rows that cannot be used (empty text,
empty label level, bad price for the price task) are counted in ``Catalog.skipped`` and reported,
never silently mislabelled. Splits are grouped by normalised title, because titles repeat heavily.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from shelfml.dataspec import LEVELS, PRICE, DataError, DataSpec, bom_tolerant  # noqa: F401  (re-exported)
from shelfml.labels import MAX_LEVELS, MIN_LEVELS, Label, Taxonomy, clean_value
from shelfml.prices import parse_prices

SPLITS = ("train", "validation", "test")
DEFAULT_TEXT_COL = "title"  # a table's title column unless --text-col names another (as in shelfml-client)
MAX_DESCRIPTION_CHARS = 300
FLIPKART_FILE = "flipkart_ecommerce_20k/flipkart_ecommerce_20k.csv.gz"


@dataclass
class Catalog:
    frame: pd.DataFrame
    level_names: list[str]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def level_columns(self) -> list[str]:
        return [f"level_{i + 1}" for i in range(len(self.level_names))]

    def labels(self) -> list[Label]:
        paths = self.frame[self.level_columns].itertuples(index=False, name=None)
        return [Label(tuple(v for v in p if v), b) for p, b in zip(paths, self.frame["brand"])]  # short: ends early

    def inputs(self) -> list[str]:
        """The model's input text: title, then the start of the description when there is one."""
        return [model_input(t, d) for t, d in zip(self.frame["text"], self.frame["description"])]

    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_labels(self.level_names, self.labels())

    def report_skipped(self) -> "Catalog":
        """Tell the user (stderr) which rows were left out, and why; returns the catalog."""
        if self.skipped:
            reasons = "; ".join(f"{n:,} {reason}" for reason, n in self.skipped.items())
            print(f"shelfml: {self.source}: skipped {sum(self.skipped.values()):,} rows: {reasons}", file=sys.stderr)
        return self

    def subset(self, index: Sequence[int] | np.ndarray) -> "Catalog":
        return Catalog(self.frame.iloc[np.asarray(index)].reset_index(drop=True), self.level_names, self.source)

    def fingerprint(self) -> str:
        """Content hash of the usable rows (order-sensitive)."""
        cols = ["text", "description", *self.level_columns, "brand", "price"]
        digest = hashlib.sha256()
        for row in self.frame[cols].itertuples(index=False, name=None):
            digest.update("\x1f".join(map(str, row)).encode() + b"\x1e")
        return digest.hexdigest()[:16]


def model_input(title: str, description: str = "") -> str:
    description = " ".join(str(description).split())[:MAX_DESCRIPTION_CHARS]
    return f"{title}. {description}" if description else str(title)


def normalise_title(title: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", str(title).lower()).split())


def read_table(path: Path, encoding: str = "utf-8", skip_rows: int = 0) -> pd.DataFrame:
    """A table as strings, exactly as written: a CSV file (``.csv``, ``.csv.gz``) or the first sheet of an Excel
    workbook (``.xlsx``), its header ``skip_rows`` lines (sheet rows) down. DataError naming the line or cell
    of what cannot be read."""
    path = Path(path)
    if skip_rows < 0:
        raise DataError(f"{path}: --skip-rows must be >= 0, got {skip_rows}")
    frame = _read_xlsx(path, skip_rows) if path.suffix.lower() == ".xlsx" else _read_csv(path, encoding, skip_rows)
    if frame.empty:
        raise DataError(f"{path} has a header but no rows" + (f" (after skipping {skip_rows} rows)" if skip_rows else ""))
    return frame


def _read_csv(path: Path, named: str, skip_rows: int) -> pd.DataFrame:
    """Every row must have the header's number of fields (pandas would otherwise shift a row with one field too
    many into an index column, silently); a UTF-8 byte-order mark is dropped; an undecodable byte is named."""
    encoding = bom_tolerant(named)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding=encoding, newline="") as f:
            for _ in range(skip_rows):
                f.readline()
            reader = csv.reader(f, strict=True)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path} is empty" + (f" after {skip_rows} skipped lines" if skip_rows else "")
                                + ": expected a header row and at least one product")
            bad = [(skip_rows + reader.line_num, len(row)) for row in reader if row and len(row) != len(header)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid {named}: byte 0x{e.object[e.start]:02x} at offset {e.start}; "
                        "re-encode the file or pass --encoding (e.g. latin-1)") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV: line {skip_rows + reader.line_num}: {e}") from None
    if bad:
        lines = ", ".join(f"line {n} has {k}" for n, k in bad[:5])
        raise DataError(f"{path}: {len(bad):,} row(s) do not have the header's {len(header)} fields: {lines}"
                        f"{' ...' if len(bad) > 5 else ''}; quote fields that hold the delimiter"
                        + ("" if skip_rows else ", or pass --skip-rows if the header is not on the first line"))
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding, index_col=False,
                       skiprows=skip_rows)


def _cell_text(value) -> str:
    """A cell as text, numbers as Excel shows them (``12.0`` -> ``12``)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_xlsx(path: Path, skip_rows: int) -> pd.DataFrame:
    """The first sheet's cached values as text; a header cell that is empty or repeated and an error cell
    (``#N/A``, ``#DIV/0!``...) are named by their address."""
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except (OSError, ValueError, KeyError, InvalidFileException, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a readable .xlsx workbook: {e}") from None
    try:  # (sheet row number, cells) of the rows not left blank
        rows = [(n, list(r)) for n, r in enumerate(book.worksheets[0].iter_rows(min_row=skip_rows + 1), skip_rows + 1)
                if any(c.value not in (None, "") for c in r)]
    finally:
        book.close()
    if not rows:
        raise DataError(f"{path}: the first sheet is empty" + (f" below row {skip_rows}" if skip_rows else ""))
    errors = [(f"{get_column_letter(j + 1)}{n}", c.value) for n, r in rows for j, c in enumerate(r)
              if c.data_type == "e"]
    if errors:
        raise DataError(f"{path}: cell {errors[0][0]} holds the Excel error {errors[0][1]}; "
                        f"{len(errors):,} error cell(s) in all: fix or clear them")
    (header_row, header), body = rows[0], [r for _, r in rows[1:]]
    names = [_cell_text(c.value).strip() for c in header]
    for j, name in enumerate(names):
        where = f"{path}: cell {get_column_letter(j + 1)}{header_row}"
        if not name and any(len(r) > j and r[j].value not in (None, "") for r in body):
            raise DataError(f"{where}: a column with values has no header" + (
                "" if skip_rows else "; pass --skip-rows if the header is not on the first row"))
        if name and names.index(name) != j:
            raise DataError(f"{where}: header {name!r} repeats cell {get_column_letter(names.index(name) + 1)}"
                            f"{header_row}")
    keep = [j for j, name in enumerate(names) if name]
    return pd.DataFrame([[_cell_text(r[j].value) if j < len(r) else "" for j in keep] for r in body],
                        columns=[names[j] for j in keep], dtype=str)


def shared_data_dir() -> Path | None:
    """``$SHELFML_DATA_DIR``, else ``../shared/data`` beside the project or the working directory."""
    candidates = [os.environ.get("SHELFML_DATA_DIR"), Path(__file__).resolve().parents[2] / "shared/data"]
    candidates.append(Path.cwd().parent / "shared/data")
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


# ---------------------------------------------------------------------------------------------
# Loading


def load_catalog(spec: DataSpec, task: str = "tagger") -> Catalog:
    """Load and validate a catalog for ``task``: the rows usable for what its family learns
    (:data:`LEVELS` or :data:`PRICE`, ``Family.target``)."""
    from shelfml.families import UnknownTaskError, family

    try:
        target = family(task).target
    except UnknownTaskError as e:
        raise DataError(str(e)) from None
    if spec.source == "synthetic":
        from shelfml.synthetic import generate_catalog

        raw = generate_catalog(spec.synthetic_rows, spec.synthetic_seed)
        mapping = dict(text="title", desc="description", levels=["supergroup", "group", "module"],
                       brand="brand", price="price", image="image")
        return _standardise(raw, mapping, "synthetic", target, spec)
    if spec.source == "flipkart":
        return _load_flipkart(spec, target)
    return _load_csv(spec, target)


def _load_flipkart(spec: DataSpec, target: str) -> Catalog:
    root = shared_data_dir()
    if root is None or not (root / FLIPKART_FILE).is_file():
        raise DataError(f"Flipkart data not found: set SHELFML_DATA_DIR to the folder holding {FLIPKART_FILE}")
    raw = read_table(root / FLIPKART_FILE)
    raw = raw[pd.to_numeric(raw["cat_depth"]) >= spec.min_depth]
    folder = (root / FLIPKART_FILE).parent
    raw = raw.assign(local_image=[str(folder / p) if p else "" for p in raw["local_image"]])
    mapping = dict(text=spec.text_col or "product_name", desc=spec.desc_col or "description",
                   levels=spec.levels or ["cat_l1", "cat_l2", "cat_l3"], brand=spec.brand_col or "brand",
                   price=spec.price_col or "discounted_price", image=spec.image_col or "local_image")
    return _standardise(raw, mapping, f"flipkart(depth>={spec.min_depth})", target, spec)


def _load_csv(spec: DataSpec, target: str) -> Catalog:
    path = Path(spec.source)
    if not path.is_file():
        raise DataError(f"data source {spec.source!r} is not 'synthetic', 'flipkart' or an existing table file "
                        "(.csv, .csv.gz, .xlsx)")
    if spec.levels and spec.path_col:
        raise DataError(f"{path}: pass either --levels or --path-col, not both")
    if target == LEVELS and not (spec.levels or spec.path_col):
        raise DataError(f"{path}: --levels col1,col2[,col3[,col4]] (or --path-col COL --path-sep SEP) is required "
                        "to train or evaluate the tagger")
    if target == PRICE and not spec.price_col:
        raise DataError(f"{path}: --price-col is required for the price task")
    raw = read_table(path, spec.encoding, spec.skip_rows)
    text_col = spec.text_col or DEFAULT_TEXT_COL
    if text_col not in raw.columns:
        raise DataError(f"{path}: no title column {text_col!r} (--text-col"
                        f"{'' if spec.text_col else ', default ' + repr(DEFAULT_TEXT_COL)}); its columns: "
                        f"{list(raw.columns)}")
    levels = spec.levels or []
    if spec.path_col:
        raw, levels = split_path_column(raw, spec.path_col, spec.path_sep, str(path), spec.allow_short_paths)
    mapping = dict(text=text_col, desc=spec.desc_col, levels=levels, brand=spec.brand_col,
                   price=spec.price_col, image=spec.image_col)
    base = path.parent
    if spec.image_col and spec.image_col in raw:
        raw[spec.image_col] = [p if not p or "://" in p or Path(p).is_absolute() else str(base / p)
                               for p in raw[spec.image_col]]
    return _standardise(raw, mapping, str(path), target, spec)


def split_path_column(raw: pd.DataFrame, column: str, sep: str, source: str,
                      allow_short: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """One path column (``a > b > c``) -> one column per level (``COL[1]``, ``COL[2]``, ...). Every row must have
    the same depth (the most common one), else DataError naming the rows (CSV line numbers) whose depth differs;
    ``allow_short``: the deepest path sets the levels and shorter rows leave the last ones empty."""
    if column not in raw.columns:
        raise DataError(f"{source}: path column {column!r} not found; available: {list(raw.columns)}")
    if not sep.strip():
        raise DataError(f"{source}: --path-sep must not be blank")
    parts = [[p.strip() for p in str(v).split(sep.strip()) if p.strip()] for v in raw[column]]
    depths = pd.Series([len(p) for p in parts], index=raw.index)
    nonempty = depths[depths > 0]
    if nonempty.empty:
        raise DataError(f"{source}: path column {column!r} is empty in every row")
    depth = int(nonempty.max() if allow_short else nonempty.mode().iloc[0])
    if not MIN_LEVELS <= depth <= MAX_LEVELS:
        raise DataError(f"{source}: paths in {column!r} have {depth} levels (split on {sep.strip()!r}); "
                        f"expected {MIN_LEVELS}-{MAX_LEVELS}")
    bad = [i for i, d in enumerate(depths) if d and d != depth and not (allow_short and d < depth)]
    if bad:
        lines = ", ".join(f"line {i + 2} ({depths.iloc[i]} levels)" for i in bad[:5])
        raise DataError(f"{source}: {len(bad):,} rows of {column!r} do not have {depth} levels: {lines}"
                        f"{' ...' if len(bad) > 5 else ''}; pass --allow-short-paths to keep shorter ones, or fix "
                        "the rows")
    names = [f"{column}[{i + 1}]" for i in range(depth)]
    levels = pd.DataFrame([p + [""] * (depth - len(p)) for p in parts], index=raw.index, columns=names)
    return pd.concat([raw, levels], axis=1), names


def strip_quotes(text: str) -> str:
    """A value wrapped in one pair of stray quotes (``"Nike Shoe"``, ``“Nike Shoe”``) loses them; inner quotes
    stay."""
    if len(text) >= 2 and (text[0], text[-1]) in (('"', '"'), ("'", "'"), ("\u201c", "\u201d")):
        inner = text[1:-1].strip()
        return inner if inner and text[0] not in inner else text
    return text


def _standardise(raw: pd.DataFrame, m: dict, source: str, target: str, spec: DataSpec) -> Catalog:
    levels = list(m["levels"])
    if target == LEVELS and not MIN_LEVELS <= len(levels) <= MAX_LEVELS:
        raise DataError(f"{source}: expected {MIN_LEVELS}-{MAX_LEVELS} label levels, got {len(levels)}: {levels}")
    wanted = [m["text"], *levels, m["brand"], m["price"], m["image"], m["desc"]]
    missing = [c for c in wanted if c and c not in raw.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} not found; available: {list(raw.columns)}")

    def column(name: str | None) -> pd.Series:
        return raw[name].astype(str) if name else pd.Series([""] * len(raw), index=raw.index)

    frame = pd.DataFrame({"text": column(m["text"]).map(lambda s: strip_quotes(" ".join(s.split()))),
                          "description": column(m["desc"]).map(lambda s: strip_quotes(" ".join(s.split())))})
    for i, name in enumerate(levels):
        frame[f"level_{i + 1}"] = column(name).map(clean_value)
    frame["brand"] = column(m["brand"]).map(clean_value)
    frame["price"], frame["price_unit"], unreadable = parse_prices(column(m["price"]), spec.price_range)
    frame["image"] = column(m["image"]).str.strip()

    skipped: dict[str, int] = {}
    keep = pd.Series(True, index=frame.index)

    def drop(mask: pd.Series, reason: str) -> None:
        n = int((mask & keep).sum())
        if n:
            skipped[reason] = n
        keep.loc[mask] = False

    drop(frame["text"] == "", f"empty text ({m['text']})")
    if target == LEVELS:
        _drop_bad_paths(frame, levels, spec.allow_short_paths, drop)
    else:
        for reason, texts in unreadable.items():  # named with examples, never guessed
            examples = ", ".join(repr(t) for t in list(dict.fromkeys(texts))[:3])
            drop(frame["price"].isna() & column(m["price"]).isin(texts), f"price {reason} ({m['price']}), e.g. {examples}")
        drop(~np.isfinite(frame["price"]), f"missing price ({m['price']})")
        drop(frame["price"] <= 0, f"zero or negative price ({m['price']})")
    frame = frame[keep].reset_index(drop=True)
    if spec.limit:
        frame = frame.head(spec.limit)
    if frame.empty:
        raise DataError(f"{source}: no usable rows (skipped: {skipped or 'none'})")
    return Catalog(frame, levels, source, skipped)


def _drop_bad_paths(frame: pd.DataFrame, levels: list[str], allow_short: bool, drop) -> None:
    """Rows with an empty level; ``allow_short``: only those with fewer than 2 levels or a gap (an empty level
    above a filled one), the others being valid shorter paths."""
    empty = [frame[f"level_{i + 1}"] == "" for i in range(len(levels))]
    for name, mask in zip(levels[:MIN_LEVELS], empty):
        drop(mask, f"empty label level ({name})")
    if not allow_short:
        for name, mask in zip(levels[MIN_LEVELS:], empty[MIN_LEVELS:]):
            drop(mask, f"empty label level ({name}; --allow-short-paths keeps paths that stop early)")
        return
    gap = pd.Series(False, index=frame.index)
    for i in range(MIN_LEVELS, len(levels) - 1):
        gap |= empty[i] & ~np.logical_and.reduce([e for e in empty[i + 1:]])
    drop(gap, "gap in the path (an empty level above a filled one)")


# ---------------------------------------------------------------------------------------------
# Splitting


@dataclass
class SplitInfo:
    seed: int
    fractions: tuple[float, float, float]
    counts: dict[str, int]
    groups: dict[str, int]
    test_fingerprint: str
    group_key: str = "normalised title"

    def to_dict(self) -> dict:
        return asdict(self)


def split_catalog(
    catalog: Catalog, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> tuple[dict[str, Catalog], SplitInfo]:
    """Train/validation/test split grouped by normalised title: a title never crosses splits."""
    assert abs(sum(fractions) - 1) < 1e-6, f"split fractions must sum to 1, got {fractions}"
    keys = catalog.frame["text"].map(normalise_title)
    groups = np.array(sorted(set(keys)))
    if len(groups) < 3:
        raise DataError(f"{catalog.source}: need at least 3 distinct titles to split, got {len(groups)}")
    np.random.default_rng(seed).shuffle(groups)
    n_train = max(1, int(round(fractions[0] * len(groups))))
    n_val = max(1, int(round(fractions[1] * len(groups))))
    n_train = min(n_train, len(groups) - 2)
    assign = {g: "train" for g in groups[:n_train]}
    assign.update({g: "validation" for g in groups[n_train : n_train + n_val]})
    assign.update({g: "test" for g in groups[n_train + n_val :]})
    which = keys.map(assign).to_numpy()
    parts = {s: catalog.subset(np.flatnonzero(which == s)) for s in SPLITS}
    info = SplitInfo(
        seed=seed,
        fractions=tuple(fractions),
        counts={s: len(p) for s, p in parts.items()},
        groups={s: int(sum(1 for v in assign.values() if v == s)) for s in SPLITS},
        test_fingerprint=parts["test"].fingerprint(),
    )
    return parts, info
