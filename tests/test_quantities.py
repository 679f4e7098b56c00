"""Sizes and packs read from real-looking titles: units and their base-unit factors, decimals with a point or a
comma, multipacks, and titles with none."""

import math

import pytest

from shelfml.quantities import DIMENSIONS, FEATURES, parse_quantities


@pytest.mark.parametrize("title, amounts, pack", [
    ("Dove Herbal Shampoo 500 ml", {"volume_ml": 500}, 1),
    ("Fortune Sunflower Oil 1.5L (Pack of 2)", {"volume_ml": 1500}, 2),
    ("Aashirvaad Atta 1,5 kg", {"mass_g": 1500}, 1),
    ("Parle-G Biscuits 2 x 200 g", {"mass_g": 200}, 2),
    ("Coca-Cola 330 ml x 6", {"volume_ml": 330}, 6),
    ("Lux Soap Set of 3, 125 g each", {"mass_g": 125}, 3),
    ("Bounty paper towels 3-pack", {}, 3),
    ("Olay Cream 1.7 fl oz", {"volume_ml": 1.7 * 29.5735}, 1),
    ("Optimum Whey 2 lbs", {"mass_g": 2 * 453.592}, 1),
    ("Samsung 55 inch 4K TV 20 W speakers", {"length_cm": 55 * 2.54, "power_w": 20}, 1),
    ("Redmi Note 128GB 6 GB RAM", {"storage_gb": 128}, 1),
    ("Mi Power Bank 10000 mAh", {"charge_mah": 10000}, 1),
    ("Cello pens 12 pcs", {"count": 12}, 1),
    ("Green tea 100 tablets", {"count": 100}, 1),
    ("Men's cotton T-shirt XL", {}, 1),
    ("Nike shoes UK 8", {}, 1),
    ("Pack of 100000 stickers", {}, 1),  # a misread, not a pack
    ("Mug 350ML", {"volume_ml": 350}, 1),
])
def test_quantities_of_real_looking_titles(title, amounts, pack):
    q = parse_quantities(title)
    assert q.amounts == pytest.approx(amounts) and q.pack == pack


def test_features_are_log_amounts_per_dimension_then_the_pack():
    features = parse_quantities("Oil 1 L pack of 4").features()
    assert len(features) == FEATURES == 2 * len(DIMENSIONS) + 2
    volume = 2 * DIMENSIONS.index("volume_ml")
    assert features[volume:volume + 2] == pytest.approx([1.0, math.log(1000)])
    assert features[-2:] == pytest.approx([1.0, math.log(4)])
    assert sum(features[:volume] + features[volume + 2:-2]) == 0
    assert parse_quantities("plain title").features() == [0.0] * FEATURES
