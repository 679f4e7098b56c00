"""Tests for the embedded synthetic catalog (shelfml.synthetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shelfml.synthetic import generate_catalog

COLUMNS = ["title", "description", "supergroup", "group", "module", "brand", "price", "image"]
LABELS = ["supergroup", "group", "module"]


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return generate_catalog(4000, seed=0)


def test_deterministic_for_same_seed(catalog: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(catalog, generate_catalog(4000, seed=0))
    pd.testing.assert_frame_equal(generate_catalog(500, seed=7), generate_catalog(500, seed=7))


def test_different_seed_differs(catalog: pd.DataFrame) -> None:
    other = generate_catalog(4000, seed=1)
    assert not catalog.equals(other)
    assert (catalog["title"] != other["title"]).mean() > 0.9


def test_columns_and_dtypes(catalog: pd.DataFrame) -> None:
    assert list(catalog.columns) == COLUMNS
    assert len(catalog) == 4000
    for col in COLUMNS:
        if col == "price":
            assert pd.api.types.is_float_dtype(catalog[col])
        else:
            assert pd.api.types.is_string_dtype(catalog[col])
            assert all(isinstance(v, str) for v in catalog[col])
    assert (catalog["image"] == "").all()
    empty = generate_catalog(0, seed=0)
    assert list(empty.columns) == COLUMNS and len(empty) == 0


def test_no_empty_required_values(catalog: pd.DataFrame) -> None:
    for col in ["title", *LABELS]:
        assert (catalog[col].str.strip() != "").all(), col
    assert catalog.notna().all().all()
    assert 0.02 < (catalog["brand"] == "").mean() < 0.10
    assert 0.3 < (catalog["description"] == "").mean() < 0.5


def test_label_values_have_no_separators(catalog: pd.DataFrame) -> None:
    for col in [*LABELS, "brand"]:
        values = catalog[col]
        assert not values.str.contains(" > ", regex=False).any(), col
        assert not values.str.contains("|", regex=False).any(), col
        assert not values.str.contains(">", regex=False).any(), col


def test_prices_positive_and_rounded(catalog: pd.DataFrame) -> None:
    price = catalog["price"]
    assert (price > 0).all()
    assert np.allclose(price, price.round(2))
    per_module = catalog.groupby("module")["price"].median()
    assert per_module.max() / per_module.min() > 1000  # modules span orders of magnitude


def test_taxonomy_coverage(catalog: pd.DataFrame) -> None:
    paths = catalog[LABELS].drop_duplicates()
    assert len(paths) >= 50
    assert catalog["module"].nunique() == len(paths)  # a module name identifies its path
    assert catalog["brand"].nunique() >= 30


def test_titles_repeat_sometimes(catalog: pd.DataFrame) -> None:
    assert 0.03 < catalog["title"].duplicated().mean() < 0.25


def test_brand_in_title_for_most_but_not_all_branded_rows(catalog: pd.DataFrame) -> None:
    branded = catalog[catalog["brand"] != ""]
    in_title = np.array([b.lower() in t.lower() for t, b in zip(branded["title"], branded["brand"])])
    assert 0.5 < in_title.mean() < 0.95
    not_in_title = branded[~in_title]
    in_desc = [b.lower() in d.lower() for d, b in zip(not_in_title["description"], not_in_title["brand"])]
    assert 0 < np.mean(in_desc) < 1  # sometimes only the description names the brand


def test_module_is_learnable_but_not_trivial(catalog: pd.DataFrame) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    text = [f"{t}. {d}" if d else t for t, d in zip(catalog["title"], catalog["description"])]
    y = catalog["module"].to_numpy()
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=1000))
    model.fit(text[:3000], y[:3000])
    accuracy = (model.predict(text[3000:]) == y[3000:]).mean()
    assert 0.6 <= accuracy < 0.995, accuracy
