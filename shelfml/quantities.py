"""Sizes and packs in product titles, as numbers: "500 ml", "1,5 kg", "2 x 200 g", "Pack of 6", "128GB".

A price grows with the amount sold, but no bag of words knows that "1.5 L" is three times "500 ml". Each
quantity is read as (dimension, amount in the dimension's base unit) and the pack count apart, so a linear
model on their logarithms learns how price scales with size per dimension (the price model's wide branch,
:mod:`shelfml.price.wide`). Pure Python: the served model computes the same features from the text it receives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# unit spelling (lower case) -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, float]] = {}
for names, dim, factor in [
    (("ml", "mls", "millilitre", "millilitres", "milliliter", "milliliters"), "volume_ml", 1.0),
    (("cl",), "volume_ml", 10.0), (("dl",), "volume_ml", 100.0),
    (("l", "lt", "ltr", "ltrs", "litre", "litres", "liter", "liters"), "volume_ml", 1000.0),
    (("fl oz", "floz", "fl. oz", "fl.oz"), "volume_ml", 29.5735), (("gal", "gallon", "gallons"), "volume_ml", 3785.41),
    (("mg",), "mass_g", 0.001), (("g", "gm", "gms", "gr", "gram", "grams", "gramm"), "mass_g", 1.0),
    (("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"), "mass_g", 1000.0),
    (("lb", "lbs", "pound", "pounds"), "mass_g", 453.592), (("oz", "ounce", "ounces"), "mass_g", 28.3495),
    (("pc", "pcs", "piece", "pieces", "count", "ct", "tablets", "tabs", "capsules", "caps", "sheets", "rolls",
      "sachets", "bags", "pods", "wipes", "units"), "count", 1.0),
    (("mb",), "storage_gb", 1 / 1024), (("gb",), "storage_gb", 1.0), (("tb",), "storage_gb", 1024.0),
    (("mm",), "length_cm", 0.1), (("cm",), "length_cm", 1.0), (("inch", "inches", '"', "''"), "length_cm", 2.54),
    (("ft", "feet"), "length_cm", 30.48),
    (("w", "watt", "watts"), "power_w", 1.0), (("kw",), "power_w", 1000.0),
    (("mah",), "charge_mah", 1.0),
]:
    for name in names:
        UNITS[name] = (dim, factor)
DIMENSIONS = tuple(dict.fromkeys(dim for dim, _ in UNITS.values()))

_NUMBER = r"(\d+(?:[.,]\d+)?)"
_UNIT = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
_QUANTITY = re.compile(rf"(?:(\d+)\s*[x×*]\s*)?{_NUMBER}\s*({_UNIT})(?![a-z])", re.IGNORECASE)
_PACK = re.compile(r"\b(?:pack|set|combo|box|case|bundle|lot)\s+of\s+(\d+)\b|\b(\d+)\s*-?\s*(?:pack|pk|packs)\b"
                   r"|(?<![\d.,])(\d+)\s*[x×]\s*(?=\d)|\b[x×]\s*(\d+)\b(?!\s*(?:" + _UNIT + r")(?![a-z]))",
                   re.IGNORECASE)
MAX_PACK = 1000  # "Pack of 100000" is a misread, not a pack


@dataclass(frozen=True)
class Quantities:
    """A title's first amount per dimension (base units) and its pack count (1 when none)."""

    amounts: dict[str, float] = field(default_factory=dict)
    pack: int = 1

    def features(self) -> list[float]:
        """[present, log amount] per dimension of :data:`DIMENSIONS`, then [pack > 1, log pack]."""
        out: list[float] = []
        for dim in DIMENSIONS:
            amount = self.amounts.get(dim)
            out += [1.0, math.log(amount)] if amount else [0.0, 0.0]
        return out + [float(self.pack > 1), math.log(self.pack)]


FEATURES = 2 * len(DIMENSIONS) + 2


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def parse_quantities(text: str) -> Quantities:
    """The sizes and the pack count written in ``text`` (none: empty amounts, pack 1)."""
    amounts: dict[str, float] = {}
    pack = 1
    for m in _QUANTITY.finditer(text):
        dim, factor = UNITS[m.group(3).lower()]
        value = _number(m.group(2)) * factor
        if value > 0 and dim not in amounts:
            amounts[dim] = value
        if m.group(1) and pack == 1:  # "2 x 200 g"
            pack = int(m.group(1))
    if pack == 1:
        for m in _PACK.finditer(text):
            n = int(next(g for g in m.groups() if g))
            if 1 < n <= MAX_PACK:
                pack = n
                break
    return Quantities(amounts, pack if pack <= MAX_PACK else 1)
