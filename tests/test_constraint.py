"""The compiled constraint against a plain trie walk, and jump-forward against one decoder call per token."""

import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelfml.constraint import (COPY_CLASSES, MAX_BRAND_TOKENS, CompiledTrie, LabelConstraint, positioned_spans,
                                copy_class_of, span_candidates)
from shelfml.decoding import greedy_decode
from shelfml.labels import Label, TargetCodec, Taxonomy
from shelfml.prior import PriorBatch

WORDS = ["kitchen", "mugs", "garden", "tools", "spades", "home", "bath", "towels", "outdoor", "grills", "acme",
         "zorblax", "steel", "bottle", "pro", "max", "baby", "care", "wipes", "tea", "green", "black", "pack"]


def prefix_logits(vocab: int, seed: int, spread: float):
    """A step whose logits are a function of each row's whole fed prefix (so any way of feeding it, one token per
    call or several, sees the same logits at the same place), and a count of its calls."""
    history: dict[int, list[int]] = {}
    calls = {"n": 0}

    def step(tokens: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        out = np.empty((len(tokens), vocab), np.float32)
        for b, row in enumerate(tokens.tolist()):
            history.setdefault(b, []).extend(row)
            key = zlib.crc32(np.array([seed, b, *history[b]], np.int64).tobytes())
            out[b] = np.random.default_rng(key).normal(scale=spread, size=vocab)
        return out

    return step, calls


def reference_decode(constraint: LabelConstraint, texts, step, max_new: int, prior=None) -> list[tuple]:
    """The constraint as a walk over dict tries, one decoder call per token: (label, token ids, log probs)."""
    codec, tax = constraint.codec, constraint.taxonomy
    path_ids = [codec.path_ids(p) for p in tax.paths]
    brands = [""] + tax.brands
    brand_ids = codec.brand_ids_many(brands)
    n_brand_leaves = len({tuple(ids) for ids in brand_ids})

    def trie(items):
        root: dict = {}
        for value, ids in items:
            node = root
            for t in ids:
                node = node.setdefault(t, {})
            node.setdefault(None, value)
        return root

    paths_root, known_root = trie(zip(tax.paths, path_ids)), trie(zip(brands, brand_ids))
    rows = []
    for text in texts:
        placed = positioned_spans(text) if constraint.brand_mode == "known+copy" else []
        ids = codec.brand_ids_many([s for s, _, _ in placed]) if placed else []
        kept = [(s, i, int(copy_class_of(np.array([f]), np.array([n]))[0]))
                for (s, f, n), i in zip(placed, ids) if len(i) <= MAX_BRAND_TOKENS]
        copy = trie(sorted(((s, i) for s, i, _ in kept), key=lambda x: x[0]))
        shared = Counter(c for _, _, c in kept)
        rows.append({"path": paths_root, "known": None, "copy": copy, "label": None, "brand": None, "out": [],
                     "logp": [], "emitted": [], "spans": [(i, c, shared[c]) for _, i, c in kept]})
    tokens = np.full((len(texts), 1), codec.pad_id, np.int64)
    for _ in range(max_new + 1):
        if all(r["brand"] is not None for r in rows):
            break
        logits = step(tokens)
        for b, r in enumerate(rows):
            if r["brand"] is not None:
                tokens[b, 0] = codec.pad_id
                continue
            nodes = [r["path"]] if r["label"] is None else [n for n in (r["known"], r["copy"]) if n is not None]
            allowed = sorted({t for n in nodes for t in n if t is not None})
            scores = logits[b, allowed].astype(np.float32)
            if prior is not None:
                mass = []
                for t in allowed:
                    prefix = r["emitted"] + [t]
                    if r["label"] is None:
                        m = sum(prior.paths[b][i] for i, p in enumerate(path_ids) if p[: len(prefix)] == prefix)
                    else:
                        m = 0.0
                        bp = prefix[len(codec.path_ids(r["label"])):]
                        if r["known"] is not None and t in r["known"]:
                            m = sum(prior.brands[b][i] for i, q in enumerate(brand_ids) if q[: len(bp)] == bp)
                        if r["copy"] is not None and t in r["copy"]:
                            if prior.copy is None:
                                m = max(m, 1.0 / n_brand_leaves)
                            else:  # each span its row's copy-class probability, shared by that class's spans
                                m += sum(prior.copy[b][c] / k for q, c, k in r["spans"] if q[: len(bp)] == bp)
                    mass.append(m)
                weight = prior.weight if r["label"] is None else prior.brand_weight
                scores = scores + np.float32(weight) * np.log(np.maximum(mass, 1e-12)).astype(np.float32)
            shifted = scores.astype(np.float64) - scores.max()
            logp = shifted - np.log(np.exp(shifted).sum())
            j = int(np.argmax(scores))
            token = allowed[j]
            r["logp"].append(float(logp[j]))
            r["emitted"].append(token)
            tokens[b, 0] = token
            if r["label"] is None:
                r["path"] = r["path"][token]
                if list(r["path"]) == [None]:
                    r["label"], r["known"], r["copy"] = r["path"][None], known_root, r["copy"]
                continue
            r["known"] = r["known"].get(token) if r["known"] is not None else None
            r["copy"] = r["copy"].get(token) if r["copy"] is not None else None
            for n in (r["known"], r["copy"]):
                if n is not None and list(n) == [None]:
                    r["brand"] = n[None]
                    break
    return [(Label(r["label"], r["brand"]), r["emitted"], r["logp"]) for r in rows]


@st.composite
def catalogs(draw):
    """A random taxonomy (2-3 levels, shared prefixes and unique names), brands (some multi-word, some written in the
    titles, "" among them through unbranded rows) and titles."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    word = lambda: " ".join(rng.choice(WORDS, size=rng.integers(1, 3)))
    paths = {tuple(word() for _ in range(rng.integers(2, 4))) for _ in range(rng.integers(1, 12))}
    brands = sorted({word().title() for _ in range(rng.integers(1, 8))})
    titles = [" ".join([rng.choice(brands) if rng.random() < 0.5 else "", word(), word()]).strip()
              for _ in range(rng.integers(1, 7))]
    return sorted(paths), brands, titles, int(rng.integers(0, 2**31))


@settings(max_examples=30, deadline=None)
@given(case=catalogs(), mode=st.sampled_from(["known", "known+copy"]), spread=st.sampled_from([0.5, 5.0]),
       weight=st.sampled_from([0.0, 1.0]))
def test_compiled_constraint_decodes_as_the_trie_walk(tokenizer, case, mode, spread, weight):
    paths, brands, titles, seed = case
    taxonomy = Taxonomy(["l1", "l2", "l3"], paths, brands)
    constraint = LabelConstraint(TargetCodec(tokenizer), taxonomy, brand_mode=mode)
    prior = None
    if weight:
        rng = np.random.default_rng(seed)
        copies = COPY_CLASSES if seed % 2 else 0  # a prior with copy classes, or one from before them
        brand_probs = rng.dirichlet(np.full(1 + len(brands) + copies, 0.5), len(titles))
        prior = PriorBatch(rng.dirichlet(np.full(len(paths), 0.5), len(titles)), brand_probs[:, : 1 + len(brands)],
                           weight, weight, brand_probs[:, 1 + len(brands) :] if copies else None)
    max_new = 80
    expected = reference_decode(constraint, titles, prefix_logits(len(tokenizer), seed, spread)[0], max_new, prior)
    for jump in (True, False):
        got = greedy_decode(prefix_logits(len(tokenizer), seed, spread)[0], titles, constraint, max_new, prior,
                            jump_forward=jump)
        for pred, (label, ids, logps) in zip(got, expected):
            assert pred.label == label
            assert pred.token_ids == ids
            assert pred.confidence == pytest.approx(float(np.exp(np.sum(logps))), rel=1e-9, abs=1e-12)


def test_jump_forward_feeds_forced_tokens_in_fewer_calls(tokenizer, small_catalog):
    """On a real taxonomy most tokens are forced: the same labels and probabilities in far fewer decoder calls."""
    constraint = LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy())
    texts = small_catalog.inputs()[:16]
    runs = {}
    for jump in (True, False):
        step, calls = prefix_logits(len(tokenizer), 7, 2.0)
        runs[jump] = greedy_decode(step, texts, constraint, 80, branches=2, jump_forward=jump), calls["n"]
    (fast, fast_calls), (slow, slow_calls) = runs[True], runs[False]
    assert [(p.label, p.token_ids, p.level_probs, p.branches) for p in fast] == \
        [(p.label, p.token_ids, p.level_probs, p.branches) for p in slow]
    assert slow_calls <= max(len(p.token_ids) for p in slow)  # one call per token (none after the last)
    assert fast_calls < slow_calls
    step, calls = prefix_logits(len(tokenizer), 7, 2.0)
    (one,) = greedy_decode(step, texts[:1], constraint, 80)
    assert (one.label, one.token_ids) == (fast[0].label, fast[0].token_ids)
    assert 2 * calls["n"] <= len(one.token_ids)  # batch 1: a forced run costs no call of its own


def test_compiled_trie_arrays():
    trie, ends = CompiledTrie.build([[5, 3, 1], [5, 2, 1], [4, 1], [5, 3, 1]])
    assert np.flatnonzero(trie.value[ends] != np.arange(4)).tolist() == [3]  # the repeat collides with sequence 0
    assert ends[3] == ends[0] and trie.value[ends[0]] == 0
    assert trie.n_leaves == 3
    root_tokens = trie.tokens[trie.offsets[0]:trie.offsets[1]].tolist()
    assert root_tokens == [4, 5]
    five = trie.child[trie.offsets[0] + 1]
    assert (trie.start[five], trie.end[five]) == (1, 3)  # [5, 2, 1] and [5, 3, 1]: leaves 1 and 2
    block, counts = trie.gather(np.array([0, 1]), np.array([0, five]), 2, np.array([-1, -1, -1]))
    assert block[0].tolist() == [0, 0, 1, 1] and block[1].tolist() == [4, 5, 2, 3] and counts.tolist() == [2, 2]
    length, end, at, tokens = trie.runs  # forced runs: from [4] the rest is [1], from [5, 2] it is [1]
    four = trie.child[trie.offsets[0]]
    assert length[four] == 1 and tokens[at[four]] == 1 and trie.degree(end[four : four + 1])[0] == 0
    assert length[0] == 0 and length[five] == 0  # a choice at the root and after [5]
    chain, _ = CompiledTrie.build([[7, 8, 6, 6], [9]])
    length, end, at, tokens = chain.runs
    seven = chain.child[chain.offsets[0]]
    assert length[seven] == 3 and tokens[at[seven] : at[seven] + 3].tolist() == [8, 6, 6]
    per_row, _ = CompiledTrie.build([[1, 2], [1, 2], [3]], groups=[0, 1, 1], n_groups=2)
    assert per_row.roots.tolist() == [0, 1]
    assert per_row.degree(per_row.roots).tolist() == [1, 2]


def test_an_empty_allowed_set_raises(tokenizer, small_catalog):
    constraint = LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy(), brand_mode="known")
    state = constraint.start(["x", "y"])
    state.path_done[1], state.node[0, 1] = True, state.dead[0]  # a row with no trie left to follow
    with pytest.raises(RuntimeError, match=r"rows \[1\]: the constraint allows no next token"):
        state.allowed(np.array([0, 1]))
    edges = state.allowed(np.array([0]))
    with pytest.raises(ValueError, match="outside the constraint"):
        state.find(edges, np.array([constraint.codec.eos_id]))


def sequences_under(trie: CompiledTrie, root: int) -> dict[tuple[int, ...], int]:
    """Every token sequence from ``root`` to a leaf, with the leaf's value."""
    out, stack = {}, [(root, ())]
    while stack:
        node, prefix = stack.pop()
        if trie.value[node] >= 0:
            out[prefix] = int(trie.value[node])
        for e in range(trie.offsets[node], trie.offsets[node + 1]):
            stack.append((int(trie.child[e]), prefix + (int(trie.tokens[e]),)))
    return out


def test_copy_trie_holds_every_title_span_as_the_tokenizer_writes_it(tokenizer, small_catalog):
    """Spans composed from their words' ids (tokenised once, cached) are the tokenizer's own ids for each span,
    one root per row, each ending in its span's text."""
    constraint = LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy())
    assert constraint._splits_words  # T5's Metaspace pre-tokenizer splits on whitespace
    texts = small_catalog.inputs()[:20] + ["L'Oréal Paris 5x100g café", "Ünïcode  double  space", ""]
    for _ in range(2):  # the second time from the word cache
        copy = constraint.copy_trie(texts)
        trie, values = copy.trie, copy.values
        for row, text in enumerate(texts):
            spans = span_candidates(text)
            expected = {tuple(ids): span for span, ids in zip(spans, constraint.codec.brand_ids_many(spans) if spans
                                                             else []) if len(ids) <= MAX_BRAND_TOKENS}
            got = {seq: values[v] for seq, v in sequences_under(trie, int(trie.roots[row])).items()}
            assert got == expected


def test_paths_that_tokenise_alike_are_named_as_collisions(tokenizer):
    """Two taxonomy paths with the same token ids (the tokenizer folds the full-width letters) cannot both be
    decoded: the later one is reported (training refuses such a taxonomy)."""
    taxonomy = Taxonomy(["l1", "l2"], [("home", "kitchen"), ("home", "ｋｉｔｃｈｅｎ"), ("garden", "tools")], ["Acme"])
    constraint = LabelConstraint(TargetCodec(tokenizer), taxonomy, brand_mode="known")
    assert constraint.collisions == [("home", "ｋｉｔｃｈｅｎ")]
    assert constraint.paths.n_leaves == 2
