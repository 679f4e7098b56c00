import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelfml.constraint import LabelConstraint
from shelfml.decoding import greedy_decode
from shelfml.labels import Label, TargetCodec
from shelfml.prior import PriorBatch


@pytest.fixture(scope="module")
def constraint(tokenizer, small_catalog):
    return LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy(), brand_mode="known+copy")


def random_step(vocab: int, seed: int, spiky: bool):
    rng = np.random.default_rng(seed)

    def step(tokens: np.ndarray) -> np.ndarray:
        logits = rng.normal(size=(tokens.shape[0], vocab)).astype(np.float32)
        if spiky:  # make invalid tokens look far better than valid ones
            logits[:, rng.integers(0, vocab, size=20)] += 50
        return logits

    return step


def follow(ids: list[int], vocab: int):
    """A step whose logits favour ``ids`` in order (the position: the tokens fed so far, start token included)."""
    fed = {"n": 0}

    def step(tokens: np.ndarray) -> np.ndarray:
        fed["n"] += tokens.shape[1]
        logits = np.zeros((tokens.shape[0], vocab), dtype=np.float32)
        logits[:, ids[min(fed["n"] - 1, len(ids) - 1)]] = 10.0
        return logits

    return step


def random_prior(constraint, batch: int, seed: int, weight: float):
    """A random label prior (Dirichlet over paths and brands) at ``weight``; None at weight 0."""
    if not weight:
        return None
    rng = np.random.default_rng(seed)
    tax = constraint.taxonomy
    return PriorBatch(rng.dirichlet(np.full(len(tax.paths), 0.3), batch),
                      rng.dirichlet(np.full(1 + len(tax.brands), 0.3), batch), weight, weight)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 9), spiky=st.booleans(),
       weight=st.sampled_from([0.0, 1.0, 50.0]))
def test_random_logits_always_give_a_taxonomy_path(constraint, small_catalog, seed, batch, spiky, weight):
    texts = [small_catalog.inputs()[(seed + i) % len(small_catalog)] for i in range(batch)]
    vocab = len(constraint.codec.tokenizer)
    prior = random_prior(constraint, batch, seed, weight)
    preds = greedy_decode(random_step(vocab, seed, spiky), texts, constraint, max_new_tokens=200, prior=prior)
    assert len(preds) == batch
    for text, pred in zip(texts, preds):
        assert pred.label.path in constraint.taxonomy
        words = set(re.findall(r"[\w&'.+-]+", text))
        assert pred.label.brand in constraint.taxonomy.brands + [""] or set(pred.label.brand.split()) <= words
        assert 0.0 <= pred.confidence <= 1.0
        assert pred.token_ids == constraint.codec.encode(pred.label)


def test_short_paths_and_their_extensions_both_decode(tokenizer):
    """A path that stops early (``--allow-short-paths``) and a longer one through it: the trie offers both the
    brand separator and the level separator after the short path, forced and random decoding stay valid."""
    from shelfml.labels import Taxonomy

    taxonomy = Taxonomy(["l1", "l2", "l3"], [("home", "kitchen"), ("home", "kitchen", "mugs"),
                                             ("garden", "tools", "spades")], ["Acme"])
    constraint = LabelConstraint(TargetCodec(tokenizer), taxonomy, brand_mode="known")
    vocab = len(tokenizer)
    for target in (Label(("home", "kitchen"), "Acme"), Label(("home", "kitchen", "mugs"), "")):
        ids = constraint.codec.encode(target)
        (pred,) = greedy_decode(follow(ids, vocab), ["a kitchen thing"], constraint, max_new_tokens=len(ids))
        assert pred.label == target
    preds = greedy_decode(random_step(vocab, 1, True), ["x"] * 30, constraint, max_new_tokens=100)
    assert all(p.label.path in taxonomy for p in preds)


def test_known_only_mode_never_copies(tokenizer, small_catalog):
    constraint = LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy(), brand_mode="known")
    texts = ["Zyxwv Qrst brand new widget"] * 4
    preds = greedy_decode(random_step(len(tokenizer), 3, True), texts, constraint, max_new_tokens=200)
    assert all(p.label.brand in constraint.taxonomy.brands + [""] for p in preds)


def test_decoder_follows_a_forced_sequence(constraint, small_catalog):
    """A step that scores exactly one target's tokens highest must reproduce that target."""
    target = small_catalog.labels()[5]
    ids = constraint.codec.encode(target)
    vocab = len(constraint.codec.tokenizer)
    (pred,) = greedy_decode(follow(ids, vocab), [small_catalog.inputs()[5]], constraint, max_new_tokens=len(ids))
    assert pred.label == Label(target.path, target.brand)


def test_copy_mode_can_emit_an_unseen_brand_from_the_title(constraint):
    tax = constraint.taxonomy
    path_ids = constraint.codec.path_ids(tax.paths[0])
    brand_ids = constraint.codec.brand_ids("Zorblax")
    ids = path_ids + brand_ids
    vocab = len(constraint.codec.tokenizer)
    (pred,) = greedy_decode(follow(ids, vocab), ["Zorblax steel water bottle 1 l"], constraint, max_new_tokens=len(ids))
    assert pred.label == Label(tax.paths[0], "Zorblax")


def test_unfinished_rows_fail_loudly(constraint, small_catalog):
    vocab = len(constraint.codec.tokenizer)
    with pytest.raises(RuntimeError, match="did not finish"):
        greedy_decode(random_step(vocab, 0, False), small_catalog.inputs()[:2], constraint, max_new_tokens=1)


def test_a_dominant_prior_decides_path_and_brand(constraint, small_catalog):
    """With flat logits, the decode follows the prior: its most likely path and brand come out."""
    tax = constraint.taxonomy
    vocab = len(constraint.codec.tokenizer)
    paths, brands = np.full((3, len(tax.paths)), 1e-6), np.full((3, 1 + len(tax.brands)), 1e-6)
    picks = [(7, 3), (0, 0), (len(tax.paths) - 1, len(tax.brands))]
    for row, (p, b) in enumerate(picks):
        paths[row, p], brands[row, b] = 1.0, 1.0
    flat = lambda tokens: np.zeros((len(tokens), vocab), dtype=np.float32)  # noqa: E731
    preds = greedy_decode(flat, ["a", "b", "c"], constraint, max_new_tokens=200,
                          prior=PriorBatch(paths, brands, 1.0, 1.0))
    assert [p.label for p in preds] == [Label(tax.paths[p], ([""] + tax.brands)[b]) for p, b in picks]
    prior_only_path = greedy_decode(flat, ["a"], constraint, max_new_tokens=200,
                                    prior=PriorBatch(paths[:1], brands[:1], 1.0, 0.0))[0]
    assert prior_only_path.label.path == tax.paths[7]  # brand weight 0: the path still follows the prior
