"""Data loading: the synthetic catalog, Flipkart, any CSV through the column mapping, errors, the grouped split."""

from __future__ import annotations

import pytest

from conftest import needs_shared
from shelfml.data import DataError, DataSpec, load_catalog, normalise_title, split_catalog

HEADER = "title,l1,l2,l3,brand,price,desc\n"


def write(tmp_path, body: str | bytes, name="catalog.csv"):
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def csv_spec(path, **kw) -> DataSpec:
    defaults = dict(source=str(path), text_col="title", levels=["l1", "l2", "l3"], brand_col="brand",
                    price_col="price", desc_col="desc")
    return DataSpec(**{**defaults, **kw})


def test_csv_column_mapping(tmp_path):
    path = write(tmp_path, HEADER + "Red  Mug 300 ml,home,kitchen,mugs,Acme,199,ceramic mug\n"
                            "Blue Tee,clothing,men,t-shirts,,\"$1,299.50\",\n")
    cat = load_catalog(csv_spec(path))
    assert cat.level_names == ["l1", "l2", "l3"]
    assert cat.frame["text"].tolist() == ["Red Mug 300 ml", "Blue Tee"]
    assert [lab.path for lab in cat.labels()] == [("home", "kitchen", "mugs"), ("clothing", "men", "t-shirts")]
    assert [lab.brand for lab in cat.labels()] == ["Acme", ""]
    assert cat.inputs()[0] == "Red Mug 300 ml. ceramic mug"
    assert cat.frame["price"].tolist() == [199.0, 1299.5]


def test_two_level_mapping_and_no_brand_column(tmp_path):
    path = write(tmp_path, "name,top,leaf\nmug,home,kitchen\ntee,clothing,men\n")
    cat = load_catalog(DataSpec(source=str(path), text_col="name", levels=["top", "leaf"]))
    assert cat.taxonomy().levels == ["top", "leaf"] and cat.taxonomy().brands == []


def test_empty_label_levels_are_reported_and_skipped(tmp_path):
    path = write(tmp_path, HEADER + "a,home,kitchen,mugs,X,1,\nb,home,,mugs,X,1,\nc,home,kitchen,,X,1,\n")
    cat = load_catalog(csv_spec(path))
    assert len(cat) == 1
    assert cat.skipped == {"empty label level (l2)": 1,
                           "empty label level (l3; --allow-short-paths keeps paths that stop early)": 1}


def test_short_paths_are_kept_with_the_flag_and_gaps_are_not(tmp_path):
    path = write(tmp_path, "title,l1,l2,l3,l4,brand\n"
                           "a,home,kitchen,mugs,tall,X\nb,home,kitchen,,,X\nc,home,,mugs,,X\nd,home,kitchen,,tall,X\n"
                           "e,home,kitchen,mugs,,Y\n")
    spec = DataSpec(source=str(path), text_col="title", levels=["l1", "l2", "l3", "l4"], brand_col="brand",
                    allow_short_paths=True)
    cat = load_catalog(spec)
    assert [lab.path for lab in cat.labels()] == [("home", "kitchen", "mugs", "tall"), ("home", "kitchen"),
                                                  ("home", "kitchen", "mugs")]
    assert cat.skipped == {"empty label level (l2)": 1, "gap in the path (an empty level above a filled one)": 1}
    taxonomy = cat.taxonomy()
    assert ("home", "kitchen") in taxonomy and ("home", "kitchen", "mugs") in taxonomy
    assert len(load_catalog(DataSpec(**{**spec.__dict__, "allow_short_paths": False}))) == 1


def test_short_paths_from_a_path_column(tmp_path):
    path = write(tmp_path, "name,crumb\nshirt,A > B > C\nsocks,A > E\nbelt,A > B > F\nhat,A\n")
    cat = load_catalog(DataSpec(source=str(path), text_col="name", path_col="crumb", allow_short_paths=True))
    assert cat.level_names == ["crumb[1]", "crumb[2]", "crumb[3]"]
    assert [lab.path for lab in cat.labels()] == [("A", "B", "C"), ("A", "E"), ("A", "B", "F")]
    assert cat.skipped == {"empty label level (crumb[2])": 1}


def test_titles_in_stray_quotes_lose_them(tmp_path):
    path = write(tmp_path, 'name,l1,l2\n"""Nike Air Max""",a,b\n\u201cPuma Tee\u201d,a,b\n"""12"" ruler""",a,b\n'
                           "'Lee' jeans,a,b\n")
    cat = load_catalog(DataSpec(source=str(path), text_col="name", levels=["l1", "l2"]))
    # a quote inside (an inch mark, a quoted word) makes the outer pair ambiguous: the title stays as written
    assert cat.frame["text"].tolist() == ["Nike Air Max", "Puma Tee", '"12" ruler"', "'Lee' jeans"]


def test_header_below_the_first_line_with_skip_rows(tmp_path):
    path = write(tmp_path, "Exported 2026-11-30 by the PIM\n\n" + HEADER + "a,home,kitchen,mugs,X,1,\n")
    with pytest.raises(DataError, match="pass --skip-rows"):
        load_catalog(csv_spec(path))
    cat = load_catalog(csv_spec(path, skip_rows=2))
    assert cat.frame["text"].tolist() == ["a"] and cat.labels()[0].path == ("home", "kitchen", "mugs")


def _workbook(tmp_path, rows, name="catalog.xlsx"):
    from openpyxl import Workbook

    book = Workbook()
    for row in rows:
        book.active.append(row)
    book.save(tmp_path / name)
    return tmp_path / name


def test_an_excel_export_with_its_header_on_row_three(tmp_path):
    rows = [["Catalog export"], [], ["title", "l1", "l2", "l3", "brand", "price", "desc"],
            ["Red Mug", "home", "kitchen", "mugs", "Acme", 199, None], [None] * 7,
            ["Blue Tee", "clothing", "men", "t-shirts", None, 12.5, "cotton"]]
    path = _workbook(tmp_path, rows)
    cat = load_catalog(csv_spec(path, skip_rows=2), task="price")
    assert cat.frame["text"].tolist() == ["Red Mug", "Blue Tee"]
    assert cat.frame["price"].tolist() == [199.0, 12.5] and cat.inputs()[1] == "Blue Tee. cotton"
    with pytest.raises(DataError, match="cell B1: a column with values has no header.*--skip-rows"):
        load_catalog(csv_spec(path))


@pytest.mark.parametrize("rows, message", [
    ([["title", "l1", "l2"], ["mug", "home", "#N/A"], ["tee", "#DIV/0!", "men"]],
     r"cell C2 holds the Excel error #N/A; 2 error cell\(s\)"),
    ([["title", "l1", "title"], ["mug", "home", "x"]], r"cell C1: header 'title' repeats cell A1"),
    ([["title", "l1", "l2"]], "header but no rows"),
])
def test_excel_cells_that_cannot_be_read_are_named(tmp_path, rows, message):
    path = _workbook(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        load_catalog(DataSpec(source=str(path), text_col="title", levels=["l1", "l2"]))
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    with pytest.raises(DataError, match="not a readable .xlsx workbook"):
        load_catalog(DataSpec(source=str(tmp_path / "broken.xlsx"), text_col="title", levels=["l1", "l2"]))


@pytest.mark.parametrize(
    "body, spec_kw, message",
    [
        (HEADER + "a,b,c,d,e,1,\n", dict(levels=["l1", "l2", "nope"]), r"column\(s\) \['nope'\] not found; available"),
        ("", {}, "is empty"),
        (HEADER, {}, "header but no rows"),
        (HEADER.encode() + b"caf\xe9 mug,home,kitchen,mugs,X,1,\n", {}, r"not valid utf-8: byte 0xe9.*--encoding"),
        (HEADER + "a,,,,X,1,\n", {}, r"no usable rows.*empty label level \(l1\)"),
        (HEADER + "a,b,c,d,e,1,\n", dict(levels=["l1"]), "expected 2-4 label levels"),
        (HEADER.replace("title", "name") + "a,b,c,d,e,1,\n", dict(text_col=None),
         r"no title column 'title' \(--text-col, default 'title'\); its columns: \['name'"),
        (HEADER + "a,b,c,d,e,1,\n", dict(levels=None), "--levels"),
        (HEADER + "a,b,c,d,e,1,\nf,g,h,i,j,2,,extra\n", {}, r"1 row\(s\) do not have the header's 7 fields: line 3 has 8"),
        (HEADER + 'a,b,c,d,e,1,\n"unterminated,g\n', {}, r"not a readable CSV: line 3: unexpected end of data"),
    ],
    ids=["missing-column", "empty-file", "header-only", "non-utf8", "all-labels-empty", "one-level",
         "no-text-col", "no-levels", "extra-field", "unterminated-quote"],
)
def test_bad_csv_gives_clear_errors(tmp_path, body, spec_kw, message):
    path = write(tmp_path, body)
    with pytest.raises(DataError, match=message):
        load_catalog(csv_spec(path, **spec_kw))


def test_an_extra_field_on_every_row_is_refused_not_shifted(tmp_path):
    """pandas alone takes the first column as the index when every row has one field too many: ids read as
    titles, scored 0.0 with exit 0. The reader refuses it, naming the lines."""
    path = write(tmp_path, HEADER + "".join(f"t{i},a,b,c,X,1,,\n" for i in range(8)))
    with pytest.raises(DataError, match=r"8 row\(s\) do not have the header's 7 fields: line 2 has 8, line 3 has 8"):
        load_catalog(csv_spec(path))


def test_a_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path, ("\ufeff" + HEADER + "steel bottle,a,b,c,X,1,\n").encode("utf-8"))
    cat = load_catalog(csv_spec(path))
    assert cat.frame["text"][0] == "steel bottle"


def test_non_utf8_loads_with_the_right_encoding(tmp_path):
    path = write(tmp_path, HEADER.encode() + b"caf\xe9 mug,home,kitchen,mugs,X,1,\n")
    assert load_catalog(csv_spec(path, encoding="latin-1")).frame["text"][0] == "café mug"


def test_missing_file_and_unknown_source():
    with pytest.raises(DataError, match="not 'synthetic', 'flipkart' or an existing table file"):
        load_catalog(DataSpec(source="/no/such/file.csv"))


def test_price_task_skips_bad_prices(tmp_path):
    path = write(tmp_path, HEADER + "a,x,y,z,B,10,\nb,x,y,z,B,0,\nc,x,y,z,B,-3,\nd,x,y,z,B,abc,\ne,x,y,z,B,,\n")
    cat = load_catalog(csv_spec(path), task="price")
    assert cat.frame["price"].tolist() == [10.0]
    assert cat.skipped == {"price not a price (price), e.g. 'abc'": 1, "missing price (price)": 1,
                           "zero or negative price (price)": 2}


def test_grouped_split_keeps_titles_together_and_is_seeded(small_catalog):
    parts, info = split_catalog(small_catalog, seed=3)
    keys = {s: set(p.frame["text"].map(normalise_title)) for s, p in parts.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    assert sum(info.counts.values()) == len(small_catalog)
    again, info2 = split_catalog(small_catalog, seed=3)
    assert info2.test_fingerprint == info.test_fingerprint
    _, other = split_catalog(small_catalog, seed=4)
    assert other.test_fingerprint != info.test_fingerprint


def test_normalised_title_groups_variants():
    assert normalise_title("Alisha Solid Women's  Cycling-Shorts") == normalise_title("alisha solid women s cycling shorts")


@needs_shared
def test_flipkart_loads_depth4_three_levels():
    cat = load_catalog(DataSpec(source="flipkart"))
    assert cat.level_names == ["cat_l1", "cat_l2", "cat_l3"]
    assert 13000 < len(cat) <= 14124
    tax = cat.taxonomy()
    assert 25 <= len({p[0] for p in tax.paths}) <= 29 and len(tax.paths) > 400
    assert (cat.frame["brand"] == "").mean() < 0.5
    assert (cat.frame["price"].dropna() > 0).all()
    parts, info = split_catalog(cat)
    assert min(info.counts.values()) > 1000


def test_path_column_is_split_into_levels(tmp_path):
    csv = tmp_path / "paths.csv"
    csv.write_text("name,crumb,brand\n"
                   "Roadster maroon t-shirt,Apparel > Topwear > Tshirts,roadster\n"
                   "Peter England chinos,Apparel > Bottomwear > Trousers,peter england\n"
                   "HRX running shoes, Footwear >Sports Shoes> Running ,hrx\n", encoding="utf-8")
    catalog = load_catalog(DataSpec(source=str(csv), text_col="name", path_col="crumb", path_sep=" > ",
                                    brand_col="brand"))
    assert catalog.level_names == ["crumb[1]", "crumb[2]", "crumb[3]"]
    assert [lab.path for lab in catalog.labels()] == [("Apparel", "Topwear", "Tshirts"),
                                                      ("Apparel", "Bottomwear", "Trousers"),
                                                      ("Footwear", "Sports Shoes", "Running")]


def test_path_column_rows_of_another_depth_are_named(tmp_path):
    csv = tmp_path / "paths.csv"
    csv.write_text("name,crumb\nshirt,A > B > C\ntrousers,A > B > D\nsocks,A > E\nbelt,A > B > F\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 rows of 'crumb' do not have 3 levels: line 4 \(2 levels\)"):
        load_catalog(DataSpec(source=str(csv), text_col="name", path_col="crumb"))
    with pytest.raises(DataError, match="either --levels or --path-col"):
        load_catalog(DataSpec(source=str(csv), text_col="name", path_col="crumb", levels=["a", "b"]))
