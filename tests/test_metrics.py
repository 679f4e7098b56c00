"""Tagger metrics by hand: hierarchical precision, recall and F1 count each path's nodes with their ancestors."""

import pytest

from shelfml.labels import Label, Taxonomy
from shelfml.metrics import hierarchical_prf, tagger_metrics


def test_hierarchical_scores_count_ancestors_and_tell_equal_names_apart():
    gold = [("home", "kitchen", "mugs"), ("garden", "tools"), ("home", "bath", "towels")]
    pred = [("home", "kitchen", "kettles"), ("garden", "tools"), ("garden", "bath", "towels")]
    # common nodes: home, home>kitchen | garden, garden>tools | none (bath under garden is not bath under home)
    scores = hierarchical_prf(gold, pred)
    assert scores["precision"] == pytest.approx(4 / 8) and scores["recall"] == pytest.approx(4 / 8)
    assert scores["f1"] == pytest.approx(0.5)
    short = hierarchical_prf([("home", "kitchen", "mugs")], [("home",)])  # a short prediction: precise, not complete
    assert short["precision"] == 1.0 and short["recall"] == pytest.approx(1 / 3)
    assert short["f1"] == pytest.approx(0.5)


def test_tagger_metrics_carry_the_hierarchical_scores():
    tax = Taxonomy(["a", "b"], [("x", "y"), ("x", "z")], ["Acme"])
    metrics = tagger_metrics([Label(("x", "y"), "Acme")] * 2, [Label(("x", "y"), "acme"), Label(("x", "z"), "")], tax)
    assert metrics["item_accuracy"] == 0.5 and metrics["hierarchical"]["precision"] == pytest.approx(3 / 4)
