"""Per-level probabilities, top-k paths, calibration, thresholds, back-off and abstention."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelfml.confidence import (Calibrator, LevelCalibration, check_thresholds, decide, ece, parse_thresholds,
                                prefix_correct, threshold_for_precision)
from shelfml.constraint import LabelConstraint
from shelfml.decoding import Prediction, complete_branches, greedy_decode, top_paths
from shelfml.labels import Label, TargetCodec, Taxonomy
from shelfml.prior import PriorBatch


def history_step(vocab: int, seed: int):
    """Logits that depend only on each row's own token history (so one row decodes alike in any batch)."""
    history: list[list[int]] = []

    def step(tokens: np.ndarray) -> np.ndarray:
        if not history:
            history.extend([] for _ in range(len(tokens)))
        rows = []
        for b, fed in enumerate(tokens.tolist()):  # one token, or a forced run (jump-forward)
            history[b].extend(fed)
            rng = np.random.default_rng([seed, *history[b]])
            rows.append(rng.normal(scale=3.0, size=vocab).astype(np.float32))
        return np.stack(rows)

    return step


@pytest.fixture(scope="module")
def small_taxonomy_constraint(tokenizer):
    tax = Taxonomy(["a", "b", "c"], [("home", "kitchen", "pan"), ("home", "kitchen", "pot"), ("home", "bath", "towel"),
                                     ("toys", "outdoor", "ball"), ("toys", "indoor"), ("toys", "indoor", "puzzle")],
                   ["Acme", "Zorblax"])
    return LabelConstraint(TargetCodec(tokenizer), tax, brand_mode="known")


def exact_path_probability(constraint, path, seed, prior=None) -> float:
    """P(path) by forcing its tokens (brand separator included)."""
    ids = constraint.codec.path_ids(path)
    vocab = len(constraint.codec.tokenizer)
    ((got, prob),) = complete_branches(history_step(vocab, seed), ["x"], [ids], constraint, 64, prior)
    assert got == path
    return prob


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), weight=st.sampled_from([0.0, 2.0]))
def test_level_probabilities_are_the_exact_marginals_of_the_constrained_model(small_taxonomy_constraint, seed, weight):
    c = small_taxonomy_constraint
    tax, vocab = c.taxonomy, len(c.codec.tokenizer)
    rng = np.random.default_rng(seed)
    prior = PriorBatch(rng.dirichlet(np.ones(len(tax.paths)), 1), rng.dirichlet(np.ones(1 + len(tax.brands)), 1),
                       weight, weight) if weight else None
    (pred,) = greedy_decode(history_step(vocab, seed), ["x"], c, 64, prior, branches=len(tax.paths))
    exact = {p: exact_path_probability(c, p, seed, prior) for p in tax.paths}
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-6)  # the path distribution is proper
    path = pred.label.path
    for i, prob in enumerate(pred.level_probs):
        if i < len(path) - 1:  # every path that goes on below this prefix (a path stopping here is its own)
            marginal = sum(v for p, v in exact.items() if p[: i + 1] == path[: i + 1] and len(p) > i + 1)
        else:
            marginal = exact[path]
        assert prob == pytest.approx(marginal, abs=1e-6)
    assert all(b <= a + 1e-12 for a, b in zip(pred.level_probs, pred.level_probs[1:]))  # a child under its parent
    assert pred.confidence == pytest.approx(pred.level_probs[-1] * pred.brand_prob, rel=1e-6)
    rows = len(pred.branches)
    branch_prior = None if prior is None else PriorBatch(prior.paths.repeat(rows, 0), prior.brands.repeat(rows, 0),
                                                         weight, weight)
    completed = complete_branches(history_step(vocab, seed), ["x"] * rows, [p for _, p in pred.branches], c, 64,
                                  branch_prior)
    top = top_paths(pred, completed, k=len(tax.paths))
    assert len({p for p, _ in top}) == len(top) and path in [p for p, _ in top]  # distinct, the prediction among them
    assert sum(p for _, p in top) <= 1 + 1e-6
    for p, prob in top:  # each candidate's probability is exact
        assert prob == pytest.approx(exact[p], abs=1e-6)
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)


def test_tagger_top_k_keeps_the_predictions_and_ranks_valid_paths(tiny_checkpoint, small_catalog):
    """Top-k predictions keep the greedy labels and per-level probabilities (ONNX Runtime and served: test_export,
    test_serving)."""
    from shelfml.tagger import Tagger

    tagger = Tagger.load(tiny_checkpoint)
    texts = small_catalog.inputs()[:12]
    plain = tagger.predict(texts)
    ranked = tagger.predict(texts, top_k=4, batch_size=5)  # branches completed in batches across chunks
    assert [p.label for p in plain] == [p.label for p in ranked]
    for p, r in zip(plain, ranked):
        assert np.allclose(p.level_probs, r.level_probs, atol=1e-6)
        assert 1 <= len(r.alternatives) <= 4 and p.label.path in [a for a, _ in r.alternatives]
        assert sum(v for _, v in r.alternatives) <= 1 + 1e-6
        assert [v for _, v in r.alternatives] == sorted((v for _, v in r.alternatives), reverse=True)
        assert all(a in tagger.taxonomy for a, _ in r.alternatives)


# ---------------------------------------------------------------------------------------------
# Calibration and decisions


def test_isotonic_calibrator_is_scikit_learns_and_round_trips():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    prob = rng.uniform(size=400)
    correct = rng.uniform(size=400) < prob ** 2  # over-confident
    cal = Calibrator.fit(prob, correct, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(prob, correct.astype(float))
    grid = np.linspace(-0.1, 1.1, 50)
    assert np.allclose(cal(grid), reference.predict(grid))
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(again(grid), cal(grid))
    assert ece(cal(prob), correct) < ece(prob, correct) / 3


def test_platt_scaling_fixes_a_sharpened_model():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.3, 1.0, size=3000)
    correct = rng.uniform(size=3000) < true
    sharpened = true ** 0.2  # much too sure
    cal, scores = Calibrator.choose(sharpened, correct)
    assert set(scores) == {"platt", "isotonic"}
    assert ece(cal(sharpened), correct) < 0.03 < ece(sharpened, correct)


def test_level_calibration_round_trips_and_keeps_children_under_parents():
    rng = np.random.default_rng(2)
    raw = np.sort(rng.uniform(0.2, 1, size=(500, 3)), axis=1)[:, ::-1]
    correct = rng.uniform(size=(500, 3)) < raw
    correct = np.cumprod(correct, axis=1).astype(bool)
    calibration, summary = LevelCalibration.fit(raw, correct, ["a", "b", "c"], 0.9)
    probs = calibration.apply(raw)
    assert (np.diff(probs, axis=1) <= 1e-12).all()
    assert set(summary["levels"]) == {"a", "b", "c"}
    for i, name in enumerate("abc"):  # the thresholds reach the target on the rows they were chosen on
        keep = probs[:, i] >= calibration.thresholds[i]
        assert correct[keep, i].mean() >= 0.9
    again = LevelCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())), ["a", "b", "c"])
    assert np.array_equal(again.apply(raw), probs) and again.thresholds == calibration.thresholds
    with pytest.raises(ValueError, match="levels"):
        LevelCalibration.from_dict(calibration.to_dict(), ["a", "b"])


def test_threshold_for_precision_takes_the_most_coverage_that_reaches_the_target():
    prob = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0, 0], dtype=bool)
    assert threshold_for_precision(prob, correct, 0.8) == 0.8  # 4 of 5 right
    assert threshold_for_precision(prob, correct, 1.0) == 0.95  # ties at 0.9 are kept or dropped together
    assert threshold_for_precision(np.array([0.5]), np.array([False]), 0.9) == 1.0  # unreachable
    assert threshold_for_precision(prob, correct, 0.5) == 0.0  # all rows together reach it: nothing held back


def _preds(paths, levels):
    return [Prediction(Label(tuple(p), ""), 1.0, [], tuple(l)) for p, l in zip(paths, levels)]


def test_backoff_and_abstention_on_hand_built_cases():
    levels = ["a", "b", "c"]
    thresholds = [0.9, 0.8, 0.7]
    preds = _preds([("x", "y", "z"), ("x", "y", "z"), ("x", "y", "z"), ("x", "y", "z"), ("x", "y")],
                   [(0.95, 0.9, 0.8), (0.95, 0.85, 0.5), (0.95, 0.5, 0.5), (0.5, 0.5, 0.5), (0.95, 0.85, 0.85)])
    d = decide(preds, levels, thresholds=thresholds)
    assert d.backoff_depth.tolist() == [3, 2, 1, 0, 2]
    assert d.abstain.tolist() == [False, True, True, True, False]  # a two-level path is whole at level 2
    deep_only = decide(_preds([("x", "y", "z")], [(0.5, 0.99, 0.99)]), levels, thresholds=thresholds)
    assert deep_only.backoff_depth.tolist() == [0]  # a level counts only when every level above it does


@pytest.mark.parametrize("text, message", [("0.9,0.8", "2 thresholds given for 3 levels"),
                                           ("0.9,1.2,0.5", "within 0..1"), ("0.9,-0.1,0.5", "within 0..1"),
                                           ("0.9,high,0.5", "numbers separated by commas"),
                                           ("0.9,nan,0.5", "within 0..1")])
def test_bad_thresholds_are_refused_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_thresholds(text, ["a", "b", "c"])


def test_prefix_correctness_of_short_and_wrong_paths():
    gold = [Label(("a", "b", "c")), Label(("a", "b")), Label(("a", "x", "y"))]
    pred = [Label(("a", "b", "d")), Label(("a", "b")), Label(("a", "b", "y"))]
    assert prefix_correct(gold, pred, 3).tolist() == [[True, True, False], [True, True, True], [True, False, False]]


# ---------------------------------------------------------------------------------------------
# Through the checkpoint and the command line


def test_training_stores_a_calibration_that_the_checkpoint_round_trips(tiny_checkpoint):
    from shelfml.checkpoint import read_manifest
    from shelfml.tagger import Tagger

    recorded = read_manifest(tiny_checkpoint, task="tagger")["calibration"]
    tagger = Tagger.load(tiny_checkpoint)
    assert tagger.calibration is not None and tagger.calibration.thresholds == recorded["thresholds"]
    assert recorded["target_precision"] == 0.95 and set(recorded["validation"]["levels"]) == set(tagger.taxonomy.levels)
    check_thresholds(recorded["thresholds"], tagger.taxonomy.levels)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "shelfml", *args], capture_output=True, text=True, timeout=600)


def test_calibrate_refits_in_place_and_refuses_a_bad_target(tiny_checkpoint, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    bad = _cli("calibrate", str(ckpt), "--target-precision", "1.5")
    assert bad.returncode == 2 and "--target-precision must be between 0 and 1" in bad.stderr
    good = _cli("calibrate", str(ckpt), "--target-precision", "0.8")
    assert good.returncode == 0, good.stderr
    from shelfml.checkpoint import read_manifest

    assert read_manifest(ckpt, task="tagger")["calibration"]["target_precision"] == 0.8
    records = [json.loads(line) for line in _cli("predict", str(ckpt), "steel water bottle 1 l").stdout.splitlines()]
    (record,) = records
    probs = list(record["level_probability"].values())
    assert len(probs) == 3 and all(b <= a for a, b in zip(probs, probs[1:]))
    assert len(record["alternatives"]) == 3 and isinstance(record["abstain"], bool)
    assert record["backoff_path"] == "" or record["label"].startswith(record["backoff_path"])


def test_calibrate_with_prior_repeats_trainings_weight_search(tiny_checkpoint, tmp_path):
    """``--prior`` re-runs training's last step: the weights it finds on the same model and rows are training's."""
    import shutil

    from shelfml.checkpoint import read_manifest, update_manifest

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    trained = read_manifest(ckpt, task="tagger")["prior"]
    update_manifest(ckpt, prior={**trained, "weight": 3.5, "brand_weight": 0.5, "temperature": 0.3})
    done = _cli("calibrate", str(ckpt), "--prior")
    assert done.returncode == 0, done.stderr
    refit = read_manifest(ckpt, task="tagger")["prior"]
    assert {k: refit[k] for k in ("weight", "brand_weight", "temperature", "path_temperature")} == \
        {k: trained[k] for k in ("weight", "brand_weight", "temperature", "path_temperature")}
    assert refit["validation_search"] == trained["validation_search"]
