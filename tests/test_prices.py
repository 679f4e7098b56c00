"""Price text as real catalogs write it: read exactly, or refused naming why (never guessed)."""

from __future__ import annotations

import pytest

from shelfml.data import DataSpec, load_catalog
from shelfml.prices import Price, PriceParseError, parse_price


@pytest.mark.parametrize("text, expected", [
    ("$3.99", Price(3.99, "USD")), ("₹1,299", Price(1299.0, "INR")), ("EUR 12,50", Price(12.5, "EUR")),
    ("12.50 €", Price(12.5, "EUR")), ("Rs. 499", Price(499.0, "INR")), ("1.299,50", Price(1299.5)),
    ("1 299,50", Price(1299.5)), ("1'299.50", Price(1299.5)), ("1,29,999", Price(129999.0)),
    ("1,299.00 USD", Price(1299.0, "USD")), ("79¢", Price(0.79)), ("$3.99/lb", Price(3.99, "USD", "lb")),
    ("2.50 per kg", Price(2.5, unit="kg")), ("$1 each", Price(1.0, "USD", "each")),
    ("£7.5/100g", Price(7.5, "GBP", "100g")), ("$5-$9", Price(5.0, "USD", range_high=9.0)),
    ("5 to 9", Price(5.0, range_high=9.0)), ("10-20 USD", Price(10.0, "USD", range_high=20.0)), ("1299", Price(1299.0)),
    ("", None), ("  ", None), ("N/A", None),
])
def test_prices_are_read_as_written(text, expected):
    assert parse_price(text) == expected


@pytest.mark.parametrize("text, message", [
    ("call for price", "is not a price"), ("$", "is not a price"), ("0.99 c", "is not a price"),
    ("$10 - $5", "upper bound is below its lower bound"), ("USD 5 EUR", "names two currencies"),
])
def test_unreadable_prices_are_refused_naming_why(text, message):
    with pytest.raises(PriceParseError, match=message):
        parse_price(text)


def test_ranges_can_be_refused():
    with pytest.raises(PriceParseError, match="is a range"):
        parse_price("$5-$9", "refuse")


def test_a_catalog_with_real_world_prices_loads_without_hand_cleaning(tmp_path):
    path = tmp_path / "grocery.csv"
    rows = [("bananas", "$0.69/lb"), ("olive oil", "EUR 12,50"), ("tea", "₹1,299"), ("gum", "79¢"),
            ("coffee", "$5-$9"), ("mystery", "call for price"), ("water", ""), ("free sample", "$0.00")]
    path.write_text("name,price\n" + "".join(f'"{n}","{p}"\n' for n, p in rows), encoding="utf-8")
    spec = DataSpec(source=str(path), text_col="name", price_col="price")
    cat = load_catalog(spec, task="price")
    assert cat.frame["text"].tolist() == ["bananas", "olive oil", "tea", "gum", "coffee"]
    assert cat.frame["price"].tolist() == [0.69, 12.5, 1299.0, 0.79, 5.0]
    assert cat.frame["price_unit"].tolist() == ["lb", "", "", "", ""]
    assert cat.skipped == {"price not a price (price), e.g. 'call for price'": 1, "missing price (price)": 1,
                           "zero or negative price (price)": 1}
    refused = load_catalog(DataSpec(source=str(path), text_col="name", price_col="price", price_range="refuse"),
                           task="price")
    assert "coffee" not in refused.frame["text"].tolist()
    assert refused.skipped["price a range (--price-range refuse) (price), e.g. '$5-$9'"] == 1
