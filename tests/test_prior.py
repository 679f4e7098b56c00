"""The lexical label prior: the index finds neighbours by words and character n-grams and never a training
row's own title, it round-trips through files, it lets decoding infer brands that titles do not name, and it
travels inside the checkpoint, fitted on validation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shelfml.labels import Label, Taxonomy, format_target
from shelfml.lexical import LexicalIndex
from shelfml.metrics import tagger_metrics
from shelfml.prior import LabelPrior, PriorConfig
from shelfml.tagger.predict import Tagger, prior_only_step_factory
from shelfml.tokenizer import train_tokenizer

# A catalog whose titles never name the brand: each brand sells its own product lines (range names), and
# the category is in the title's nouns. Rows are generated here, not copied from any dataset.
LINES = {"Aquila": ["Vortex", "Nimbus"], "Borealis": ["Glacier", "Tundra"], "Cobalt": ["Ember", "Blaze"],
         "Dunmore": ["Summit", "Ridge"]}
PRODUCTS = {("home", "kitchen", "kettle"): "electric kettle 1.7 l", ("home", "kitchen", "toaster"): "2 slice toaster",
            ("sport", "outdoor", "tent"): "dome tent 3 person", ("sport", "outdoor", "backpack"): "hiking backpack 40 l"}


def line_catalog(rows_per_pair: int = 6, seed: int = 0) -> list[tuple[str, Label]]:
    rng = np.random.default_rng(seed)
    rows = []
    for brand, lines in LINES.items():
        for path, noun in PRODUCTS.items():
            for i in range(rows_per_pair):
                line = lines[i % 2]
                colour = rng.choice(["black", "grey", "red", "blue", "green"])
                rows.append((f"{line} {noun} {colour} model {rng.integers(100, 999)}", Label(path, brand)))
    return rows


@pytest.fixture(scope="module")
def lines():
    rows = line_catalog()
    rng = np.random.default_rng(1)
    order = rng.permutation(len(rows))
    train = [rows[i] for i in order[: int(0.8 * len(rows))]]
    test = [rows[i] for i in order[int(0.8 * len(rows)):]]
    taxonomy = Taxonomy(["a", "b", "c"], list(PRODUCTS), list(LINES))
    tokenizer = train_tokenizer([t for t, _ in rows] + [format_target(lab) for _, lab in rows], vocab_size=300)
    return train, test, taxonomy, tokenizer


def test_index_finds_word_and_ngram_neighbours_and_never_the_same_title():
    texts = ["Vortex electric kettle black", "Vortex electric kettle black", "Glacier dome tent", "Nimbus toaster"]
    index = LexicalIndex.build(texts, {"path": [0, 0, 1, 2]}, texts)
    rows, scores = index.search(["vortex kettle"], k=2)
    assert set(rows[0]) == {0, 1} and scores[0][0] > 0
    rows, _ = index.search(["Vortex electric kettle, black"], k=3, exclude=["vortex electric kettle black"])
    assert 0 not in rows[0] and 1 not in rows[0]  # the same normalised title is excluded
    rows, scores = index.search(["Glaciers"], k=1)  # character n-grams match an inflected word
    assert rows[0][0] == 2 and scores[0][0] > 0
    rows, scores = index.search(["zzzz qqqq"], k=2)
    assert (rows == -1).all() and (scores == 0).all()


def test_index_round_trips_and_refuses_a_changed_file(tmp_path):
    texts = [t for t, _ in line_catalog(2)]
    index = LexicalIndex.build(texts, {"path": list(range(len(texts)))}, texts)
    index.save(tmp_path / "lex")
    loaded = LexicalIndex.load(tmp_path / "lex")
    assert loaded.fingerprint() == index.fingerprint()
    for a, b in zip(index.search(texts[:5], k=4), loaded.search(texts[:5], k=4)):
        assert np.array_equal(a, b)
    manifest = json.loads((tmp_path / "lex" / "lexical.json").read_text())
    manifest["fingerprint"] = "0" * 16
    (tmp_path / "lex" / "lexical.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not match the fingerprint"):
        LexicalIndex.load(tmp_path / "lex")


def test_prior_infers_brands_that_titles_do_not_name(lines):
    """A model that knows nothing (zero logits) names no brand right by itself; with the prior it infers the
    brand from the product-line words, and the prior-only decode is the same loop."""
    train, test, taxonomy, tokenizer = lines
    texts, gold = [t for t, _ in test], [lab for _, lab in test]
    prior = LabelPrior.build([t for t, _ in train], [lab for _, lab in train], [t for t, _ in train], taxonomy,
                             PriorConfig(k=5, temperature=0.05))
    flat = prior_only_step_factory(len(tokenizer))
    without = Tagger(None, tokenizer, taxonomy, brand_mode="known").predict(texts, make_step=flat)
    tagger = Tagger(None, tokenizer, taxonomy, brand_mode="known", prior=prior)
    with_prior = tagger.predict(texts, make_step=flat)
    m0 = tagger_metrics(gold, [p.label for p in without], taxonomy)
    m1 = tagger_metrics(gold, [p.label for p in with_prior], taxonomy)
    assert m1["path_accuracy"] >= 0.9 and m1["brand_accuracy"] >= 0.75, m1
    assert m1["brand_accuracy"] >= m0["brand_accuracy"] + 0.4, (m0, m1)
    assert all(p.label.path in taxonomy for p in with_prior)
    assert tagger.predict(texts, make_step=flat, prior_weight=0) == without  # weight 0: the prior is off


def test_checkpoint_stores_the_fitted_prior_and_travels(tiny_checkpoint, tmp_path, small_catalog):
    manifest = json.loads((tiny_checkpoint / "shelfml.json").read_text())
    prior = manifest["prior"]
    assert prior["path"] == "lexical" and (tiny_checkpoint / "lexical" / "lexical.safetensors").is_file()
    search = prior["validation_search"]
    assert f"T={prior['path_temperature']} w={prior['weight']}" in search["path_accuracy"]
    assert f"T={prior['temperature']} w={prior['brand_weight']}" in search["item_accuracy"]
    assert prior["paths_from"] == "linear classifier" and (tiny_checkpoint / "lexical" / "linear.safetensors").is_file()
    moved = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint, moved)
    texts = small_catalog.inputs()[:12]
    a, b = Tagger.load(tiny_checkpoint), Tagger.load(moved)
    assert a.prior.cfg == b.prior.cfg and a.prior.cfg.weight == prior["weight"]
    assert prior["copy_classes"] == 12 and a.prior.copies and b.prior.copies  # the brand classifier's copy classes
    assert b.prior.index.featurizer.blocks  # words and character n-grams normalised apart
    assert [p.label for p in a.predict(texts)] == [p.label for p in b.predict(texts)]
    with (moved / "lexical" / "lexical.safetensors").open("r+b") as f:
        f.seek(-64, 2)
        f.write(b"\xff" * 64)
    with pytest.raises(ValueError, match="fingerprint"):
        Tagger.load(moved)


def test_prior_copies_brands_never_seen_in_training_from_where_titles_write_them():
    """Titles start with the brand, or name none (brand ""), and most brands are sold once (a long tail): the brand
    classifier learns *where* such a brand is written (its copy class), so the prior-only decode names brands
    that never occur in training, still names the frequent ones and leaves unbranded products without one; a
    classifier over the known brands alone names none of the new ones."""
    from shelfml.constraint import COPY_CLASSES
    from shelfml.lexical import LinearScorer

    rng = np.random.default_rng(3)
    syllables = ["zen", "kal", "vo", "tri", "mar", "lu", "dex", "pol", "ra", "fin", "gor", "sa"]
    names = sorted({(a + b + c).title() for a in syllables for b in syllables for c in syllables if a != b != c})
    rng.shuffle(names)
    frequent, tail, unseen = names[:4], names[4:164], names[164:204]

    def rows(brands: list[str], n: int) -> list[tuple[str, Label]]:
        out = []
        for i in range(n):
            path, noun = list(PRODUCTS.items())[i % len(PRODUCTS)]
            brand = "" if i % 4 == 3 else brands[i % len(brands)]
            title = f"{noun} {rng.choice(['black', 'grey', 'red'])} model {rng.integers(100, 999)}"
            out.append((f"{brand} {title}".strip(), Label(path, brand)))
        return out

    train, test = rows(tail, 213) + rows(frequent, 40), rows(unseen, 53)
    seen = frequent + tail
    taxonomy = Taxonomy(["a", "b", "c"], list(PRODUCTS), seen)
    texts, labels = [t for t, _ in train], [lab for _, lab in train]
    tokenizer = train_tokenizer(texts + [t for t, _ in test] + [format_target(lab) for lab in labels], vocab_size=400)
    prior = LabelPrior.build(texts, labels, texts, taxonomy)
    assert prior.copies and prior.describe()["copy_classes"] == COPY_CLASSES
    index = prior.index
    known_only = LinearScorer.fit([index.featurizer.vector(t, index.idf) for t in texts],
                                  [0 if not lab.brand else 1 + seen.index(lab.brand) for lab in labels],
                                  1 + len(seen), index.featurizer.bits)
    before = LabelPrior(index, taxonomy, prior.cfg, prior.path_scorer, known_only)
    assert not before.copies
    flat = prior_only_step_factory(len(tokenizer))
    gold = [lab for _, lab in test]
    got = {}
    for name, p in (("copy", prior), ("known", before)):
        preds = Tagger(None, tokenizer, taxonomy, prior=p).predict([t for t, _ in test], make_step=flat)
        got[name] = [pred.label.brand for pred in preds]
        assert all(pred.label.path in taxonomy for pred in preds)
    named = lambda brands: np.mean([b == lab.brand for b, lab in zip(brands, gold) if lab.brand])  # noqa: E731
    unbranded = lambda brands: np.mean([b == "" for b, lab in zip(brands, gold) if not lab.brand])  # noqa: E731
    assert named(got["copy"]) >= 0.9 and unbranded(got["copy"]) >= 0.9, got["copy"]
    assert named(got["known"]) == 0.0
    oracle, top1 = prior.oracle([t for t, _ in test], gold), prior.oracle([t for t, _ in test], gold, k=1)
    assert oracle["k"] == 5 and oracle["brand"] >= 0.9 and oracle["path"] >= top1["path"]
    assert before.oracle([t for t, _ in test], gold)["brand"] <= 0.25  # the unbranded quarter only

