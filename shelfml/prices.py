"""Price text as catalogs write it -> a number, its currency and its unit; what cannot be read is named, never
guessed.

Read: currency symbols and codes before or after the number (``$3.99``, ``₹1,299``, ``EUR 12,50``, ``12.50 €``,
``Rs. 499``), thousands separators (``1,299``, ``1.299,50``, ``1 299,50``, ``1'299.50``, Indian ``1,29,999``),
cents (``79¢``), a unit after the price (``$3.99/lb``, ``2.50 per kg``, ``$1 each``: the number is the price of
one unit, the unit is recorded), and ranges (``$5-$9``, ``5 to 9``: the lower bound, or refused with
``range="refuse"``). A single ``,`` followed by exactly three digits is a thousands separator (``1,299``),
otherwise a decimal comma (``12,50``); with both ``.`` and ``,`` the last one is the decimal separator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

RANGE_MODES = ("lower", "refuse")
CURRENCIES = {"$": "USD", "us$": "USD", "usd": "USD", "€": "EUR", "eur": "EUR", "£": "GBP", "gbp": "GBP",
              "₹": "INR", "rs": "INR", "rs.": "INR", "inr": "INR", "¥": "JPY", "jpy": "JPY", "cad": "CAD",
              "c$": "CAD", "aud": "AUD", "a$": "AUD", "chf": "CHF", "sek": "SEK", "nok": "NOK", "dkk": "DKK",
              "kr": "SEK", "zł": "PLN", "pln": "PLN", "brl": "BRL", "r$": "BRL", "mxn": "MXN", "cny": "CNY",
              "rmb": "CNY", "krw": "KRW", "₩": "KRW", "try": "TRY", "₺": "TRY", "rub": "RUB", "₽": "RUB"}
_CURRENCY = "|".join(sorted((re.escape(c) for c in CURRENCIES), key=len, reverse=True))
_NUMBER = r"\d[\d\s.,'’]*"
_AMOUNT = re.compile(rf"^\s*(?P<sign>-)?\s*(?P<pre>{_CURRENCY})?\s*(?P<num>{_NUMBER})\s*(?P<cents>¢)?\s*(?P<post>{_CURRENCY})?\s*$",
                     re.IGNORECASE)
_UNIT = re.compile(r"^(?P<price>.*?)\s*(?:/|\bper\b|\ba\b)\s*(?P<unit>(?:\d+\s*)?[a-z][a-z .]{0,14}?)\.?\s*$|"
                   r"^(?P<price2>.*?)\s+(?P<unit2>each|ea)\.?\s*$", re.IGNORECASE)
_RANGE = re.compile(r"^(?P<low>.+?)\s*(?:-|–|—|\bto\b)\s*(?P<high>.+)$", re.IGNORECASE)


class PriceParseError(ValueError):
    """A price text that is not a price (the message says why; ``reason`` is its kind, for the report)."""

    def __init__(self, message: str, reason: str = "not a price"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Price:
    value: float
    currency: str = ""  # ISO code when written ("" when none)
    unit: str = ""  # the unit the price is for ("lb", "kg", "each"; "" for the product)
    range_high: float | None = None  # the upper bound of a range, when one was written


def _number(text: str) -> float:
    digits = re.sub(r"[\s'’]", "", text)
    if "," in digits and "." in digits:
        decimal = "," if digits.rfind(",") > digits.rfind(".") else "."
        digits = digits.replace("." if decimal == "," else ",", "").replace(decimal, ".")
    elif digits.count(",") == 1 and not re.search(r",\d{3}$", digits):
        digits = digits.replace(",", ".")  # a decimal comma: 12,50
    else:
        digits = digits.replace(",", "")  # thousands: 1,299 / 1,29,999
    if digits.count(".") > 1:
        digits = digits.replace(".", "", digits.count(".") - 1)  # 1.299.000 -> 1299.000
    try:
        return float(digits)
    except ValueError:
        raise PriceParseError(f"{text!r} is not a number") from None


def _amount(text: str) -> tuple[float, str]:
    m = _AMOUNT.match(text)
    if not m:
        raise PriceParseError(f"{text.strip()!r} is not a price")
    pre, post = (m.group("pre") or "").lower(), (m.group("post") or "").lower()
    if pre and post and CURRENCIES[pre] != CURRENCIES[post]:
        raise PriceParseError(f"{text.strip()!r} names two currencies")
    value = _number(m.group("num").strip(" .,"))
    if m.group("cents"):
        value /= 100
    if m.group("sign"):
        value = -value  # read, and refused later as a negative price
    return value, CURRENCIES.get(pre or post, "")


def parse_price(text: str, range_mode: str = "lower") -> Price | None:
    """One price text -> :class:`Price`; None when empty; PriceParseError naming what is wrong."""
    text = " ".join(str(text).split())
    if not text or text.lower() in ("nan", "none", "null", "n/a", "na", "-"):
        return None
    unit = ""
    m = _UNIT.match(text)
    if m and re.search(r"\d", m.group("price") or m.group("price2") or ""):
        text, unit = (m.group("price"), m.group("unit")) if m.group("price") is not None else (m.group("price2"), m.group("unit2"))
        unit = {"ea": "each"}.get(unit.strip().lower(), unit.strip().lower())
    try:
        value, currency = _amount(text)
        return Price(value, currency, unit)
    except PriceParseError:
        r = _RANGE.match(text)
        if not r:
            raise
    (low, c1), (high, c2) = _amount(r.group("low")), _amount(r.group("high"))
    if range_mode == "refuse":
        raise PriceParseError(f"{text!r} is a range (refused: --price-range refuse)", "a range (--price-range refuse)")
    if high < low:
        raise PriceParseError(f"{text!r} is a range whose upper bound is below its lower bound")
    return Price(low, c1 or c2, unit, range_high=high)


def parse_prices(texts: pd.Series, range_mode: str = "lower") -> tuple[pd.Series, pd.Series, dict[str, list[str]]]:
    """A column -> (values, NaN where missing or unreadable; units; {reason: example texts} of the unreadable)."""
    if range_mode not in RANGE_MODES:
        raise ValueError(f"price range mode must be one of {RANGE_MODES}, got {range_mode!r}")
    values, units, bad = np.full(len(texts), np.nan), [""] * len(texts), {}
    for i, text in enumerate(texts):
        try:
            price = parse_price(text, range_mode)
        except PriceParseError as e:
            bad.setdefault(e.reason, []).append(str(text))
            continue
        if price is not None:
            values[i], units[i] = price.value, price.unit
    return pd.Series(values, index=texts.index), pd.Series(units, index=texts.index), bad
