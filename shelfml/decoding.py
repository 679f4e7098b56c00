"""One greedy, taxonomy-constrained decode loop shared by every backend.

A backend hands :func:`greedy_decode` a *step* callable: given the last token of each row
(int64, shape ``[batch, 1]``) it returns next-token logits (``[batch, vocab]``, numpy) and keeps
its own cache (encoder outputs, past keys/values) in a closure. Eager PyTorch, ONNX Runtime and
the Triton model differ only in that callable.

Constraint: a prefix trie over the token ids of every valid category path (shared by all rows),
followed by a brand trie: the known brands, plus (``brand_mode="known+copy"``) word spans of the
row's own title, so an unseen brand written in the title can still be produced.

Prior (optional, :mod:`shelfml.prior`): per row, probabilities of the paths and brands; each allowed token
gets ``weight * log(mass)`` added to its logit, the mass being the prior probability of every path (brand)
under that child of the trie. The trie's leaves are numbered depth-first, so a node's subtree is one range of
leaves and its mass is a difference of cumulative sums.

Confidence: each prediction carries the probability of its path through every level (the chain rule over the
step probabilities, exact under these constrained scores) and, when asked, the best places to leave the greedy
path; :func:`complete_branches` decodes those into alternative paths with their exact probabilities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from shelfml.labels import Label, TargetCodec, Taxonomy

StepFn = Callable[[np.ndarray], np.ndarray]
BRAND_MODES = ("known", "known+copy")
COPY_MAX_WORDS = 3
MAX_BRAND_TOKENS = 16  # copied spans longer than this are not offered


@dataclass
class TrieNode:
    children: dict[int, "TrieNode"] = field(default_factory=dict)
    value: object = None  # set on the node that ends a complete sequence
    span: tuple[int, int] = (0, 0)  # depth-first leaf range of the subtree (set by :func:`number_leaves`)
    _arrays: tuple | None = field(default=None, repr=False)

    def insert(self, ids: Sequence[int], value: object) -> bool:
        """Insert a sequence; returns False when another value already owns it."""
        node = self
        for i in ids:
            node = node.children.setdefault(int(i), TrieNode())
        if node.value is not None and node.value != value:
            return False
        node.value = value
        return True


    def child_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(child token ids, their leaf-range starts, ends), cached."""
        if self._arrays is None:
            tokens = sorted(self.children)
            self._arrays = (np.array(tokens, dtype=np.int64),
                            np.array([self.children[t].span[0] for t in tokens], dtype=np.int64),
                            np.array([self.children[t].span[1] for t in tokens], dtype=np.int64))
        return self._arrays

    def find(self, ids: Sequence[int]) -> "TrieNode":
        node = self
        for i in ids:
            node = node.children[int(i)]
        return node


def number_leaves(root: TrieNode) -> int:
    """Number the leaves depth-first (children by token id); every node's ``span`` is its leaf range."""
    count = 0
    stack: list[tuple[TrieNode, bool]] = [(root, False)]
    starts: dict[int, int] = {}
    while stack:
        node, done = stack.pop()
        if done:
            node.span = (starts[id(node)], count)
            continue
        starts[id(node)] = count
        if not node.children:
            count += 1
            node.span = (count - 1, count)
            continue
        stack.append((node, True))
        stack.extend((node.children[t], False) for t in sorted(node.children, reverse=True))
    return count


def _span_candidates(text: str) -> set[str]:
    words = re.findall(r"[\w&'.+-]+", text)
    return {" ".join(words[i : i + n]) for n in range(1, COPY_MAX_WORDS + 1) for i in range(len(words) - n + 1)}


class LabelConstraint:
    """Allowed next tokens for each row: path trie, then brand tries, then end."""

    def __init__(self, codec: TargetCodec, taxonomy: Taxonomy, brand_mode: str = "known+copy") -> None:
        if brand_mode not in BRAND_MODES:
            raise ValueError(f"brand_mode must be one of {BRAND_MODES}, got {brand_mode!r}")
        self.codec, self.taxonomy, self.brand_mode = codec, taxonomy, brand_mode
        self.path_root = TrieNode()
        self.collisions = [p for p in taxonomy.paths if not self.path_root.insert(codec.path_ids(p), p)]
        self.brand_root = self._brand_trie([""] + taxonomy.brands)
        self.n_path_leaves, self.n_brand_leaves = number_leaves(self.path_root), number_leaves(self.brand_root)
        # the leaf of each taxonomy path / brand ("" first), where a prior's probability of it goes
        self.path_leaf = np.array([self.path_root.find(codec.path_ids(p)).span[0] for p in taxonomy.paths])
        brands = [""] + taxonomy.brands
        self.brand_leaf = np.array([self.brand_root.find(ids).span[0] for ids in codec.brand_ids_many(brands)])

    def cumulative(self, prior) -> tuple[np.ndarray, np.ndarray]:
        """Per row, cumulative prior mass over the path leaves and the brand leaves (a leading 0)."""
        def cum(probs: np.ndarray, leaf: np.ndarray, n: int) -> np.ndarray:
            mass = np.zeros((len(probs), n + 1))
            keep = leaf >= 0
            np.add.at(mass, (slice(None), leaf[keep] + 1), probs[:, keep])
            return np.cumsum(mass, axis=1)

        return cum(prior.paths, self.path_leaf, self.n_path_leaves), cum(prior.brands, self.brand_leaf,
                                                                         self.n_brand_leaves)

    def _brand_trie(self, brands: Sequence[str], max_tokens: int | None = None) -> TrieNode:
        root = TrieNode()
        for brand, ids in zip(brands, self.codec.brand_ids_many(brands)):
            if max_tokens is None or len(ids) <= max_tokens:
                root.insert(ids, brand)
        return root

    def start(self, texts: Sequence[str]) -> list["_RowState"]:
        """Fresh decode state for each input text."""
        rows = []
        for text in texts:
            copy = self._brand_trie(sorted(_span_candidates(text)), MAX_BRAND_TOKENS) if self.brand_mode == "known+copy" else None
            rows.append(_RowState(self, [self.path_root], copy))
        return rows


class _RowState:
    """One row's place in the constraint: a node of the path trie, then nodes of the known-brand trie and of
    the row's own copy trie (either may run out), then done."""

    def __init__(self, constraint: LabelConstraint, nodes: list[TrieNode], copy_root: TrieNode | None) -> None:
        self.c, self.copy_root = constraint, copy_root
        self.path_node: TrieNode | None = nodes[0]
        self.known: TrieNode | None = None
        self.copy: TrieNode | None = None
        self.path: tuple[str, ...] | None = None
        self.brand: str | None = None

    @property
    def done(self) -> bool:
        return self.brand is not None

    @property
    def nodes(self) -> list[TrieNode]:
        if self.path is None:
            return [self.path_node]
        return [n for n in (self.known, self.copy) if n is not None]

    def allowed(self) -> np.ndarray:
        nodes = self.nodes
        if len(nodes) == 1:
            return nodes[0].child_arrays()[0]
        ids = set()
        for node in nodes:
            ids.update(node.children)
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    def allowed_with_prior(self, cum_path: np.ndarray, cum_brand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(allowed tokens, log prior mass of each): the mass of the paths (known brands) under each child; a
        span only the title's copy trie offers gets one brand's share."""
        if self.path is None:
            tokens, starts, ends = self.path_node.child_arrays()
            return tokens, np.log(np.maximum(cum_path[ends] - cum_path[starts], 1e-12))
        mass: dict[int, float] = {}
        if self.copy is not None:
            share = 1.0 / max(self.c.n_brand_leaves, 1)
            mass = dict.fromkeys(self.copy.children, share)
        if self.known is not None:
            tokens, starts, ends = self.known.child_arrays()
            for t, v in zip(tokens.tolist(), (cum_brand[ends] - cum_brand[starts]).tolist()):
                mass[t] = max(mass.get(t, 0.0), v)
        tokens = np.fromiter(mass, dtype=np.int64, count=len(mass))
        values = np.fromiter(mass.values(), dtype=np.float64, count=len(mass))
        return tokens, np.log(np.maximum(values, 1e-12))

    def advance(self, token: int) -> None:
        if self.path is None:
            node = self.path_node.children.get(token)
            assert node is not None, f"token {token} is outside the constraint"
            self.path_node = node
            if not node.children:  # the path and its brand separator are complete
                self.path, self.path_node = node.value, None
                self.known, self.copy = self.c.brand_root, self.copy_root
            return
        known = self.known.children.get(token) if self.known is not None else None
        copy = self.copy.children.get(token) if self.copy is not None else None
        assert known is not None or copy is not None, f"token {token} is outside the constraint"
        self.known, self.copy = known, copy
        ended = [n.value for n in (known, copy) if n is not None and not n.children]
        if ended:  # end-of-sequence emitted: brand complete
            self.brand = ended[0]


@dataclass
class Prediction:
    label: Label
    confidence: float  # probability of the emitted label among valid continuations, step by step
    token_ids: list[int]
    level_probs: tuple[float, ...] = ()  # per taxonomy level: probability of the predicted path through it
    brand_prob: float = 1.0  # probability of the brand given the path
    alternatives: tuple[tuple[tuple[str, ...], float], ...] = ()  # top-k paths with their probabilities
    branches: list[tuple[float, list[int]]] = field(default_factory=list, repr=False)  # (bound, prefix) to complete


def row_scores(row: _RowState, logits: np.ndarray, cum, prior, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(allowed tokens, their scores) of one row at one step: the logits of the tokens the constraint allows,
    plus the label prior's weighted log mass (``cum``: :meth:`LabelConstraint.cumulative` of ``prior``)."""
    if cum is None:
        allowed = row.allowed()
        return allowed, logits[allowed]
    weight = prior.weight if row.path is None else prior.brand_weight
    allowed, log_mass = row.allowed_with_prior(cum[0][b], cum[1][b])
    return allowed, logits[allowed] + np.float32(weight) * log_mass.astype(np.float32)


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores.astype(np.float64) - scores.max()
    return shifted - np.log(np.exp(shifted).sum())


def _prior_cum(constraint: LabelConstraint, prior):
    return constraint.cumulative(prior) if prior is not None and (prior.weight or prior.brand_weight) else None


def greedy_decode(
    step: StepFn, texts: Sequence[str], constraint: LabelConstraint, max_new_tokens: int = 64, prior=None,
    branches: int = 0,
) -> list[Prediction]:
    """Greedy decoding of one batch under the taxonomy constraint (``prior``: a :class:`shelfml.prior.PriorBatch`
    of these rows, whose log mass is added to the allowed tokens' logits with its weight). Each prediction
    carries the probability of its path through every level (the chain rule: the product of the step
    probabilities up to the separator that closes the level) and, with ``branches`` > 0, the best places to leave
    the greedy path (:func:`complete_branches` turns them into alternative paths)."""
    codec = constraint.codec
    rows = constraint.start(texts)
    cum = _prior_cum(constraint, prior)
    tokens = np.full((len(rows), 1), codec.pad_id, dtype=np.int64)  # T5 decoder start = pad
    steps: list[list[float]] = [[] for _ in rows]  # log probability of each emitted token
    so_far = np.zeros(len(rows))  # their running sum (a branch's bound starts from it)
    found: list[list[tuple[float, list[int]]]] = [[] for _ in rows]
    emitted: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        if all(r.done for r in rows):
            break
        logits = np.asarray(step(tokens), dtype=np.float32)
        for b, row in enumerate(rows):
            if row.done:
                tokens[b, 0] = codec.pad_id
                continue
            allowed, scores = row_scores(row, logits[b], cum, prior, b)
            logp = _log_softmax(scores)
            best = int(np.argmax(scores))
            token = int(allowed[best])
            if branches and row.path is None and len(allowed) > 1:
                for j in np.argsort(-logp)[: branches + 1]:
                    if j != best:
                        found[b].append((so_far[b] + float(logp[j]), emitted[b] + [int(allowed[j])]))
            steps[b].append(float(logp[best]))
            so_far[b] += float(logp[best])
            row.advance(token)
            emitted[b].append(token)
            tokens[b, 0] = token
    unfinished = [b for b, r in enumerate(rows) if not r.done]
    assert not unfinished, f"rows {unfinished} did not finish in {max_new_tokens} tokens; raise max_new_tokens"
    depth = len(constraint.taxonomy.levels)
    out = []
    for r, logps, ids, options in zip(rows, steps, emitted, found):
        label = Label(r.path, r.brand)
        cumulative = np.cumsum(logps)
        ends = codec.level_ends(label.path)
        levels = [float(np.exp(cumulative[e - 1])) for e in ends]
        levels += levels[-1:] * (depth - len(levels))  # a short path: its deeper levels are the path itself
        path_logp = cumulative[ends[-1] - 1]
        out.append(Prediction(label, float(np.exp(cumulative[-1])), ids, tuple(levels),
                              float(np.exp(cumulative[-1] - path_logp)),
                              branches=sorted(options, key=lambda o: -o[0])[:branches]))
    return out


def complete_branches(step: StepFn, texts: Sequence[str], prefixes: Sequence[Sequence[int]],
                      constraint: LabelConstraint, max_new_tokens: int = 64, prior=None) -> list[tuple[tuple[str, ...], float]]:
    """Each row forced through its token prefix, then decoded greedily until its path is complete: the path and
    its probability under the same constrained scores as :func:`greedy_decode` (``step`` and ``prior`` are of
    these rows: a row per prefix)."""
    codec = constraint.codec
    rows = constraint.start(texts)
    cum = _prior_cum(constraint, prior)
    tokens = np.full((len(rows), 1), codec.pad_id, dtype=np.int64)
    logprob = np.zeros(len(rows))
    for s in range(max_new_tokens):
        if all(r.path is not None for r in rows):
            break
        logits = np.asarray(step(tokens), dtype=np.float32)
        for b, row in enumerate(rows):
            if row.path is not None:
                tokens[b, 0] = codec.pad_id
                continue
            allowed, scores = row_scores(row, logits[b], cum, prior, b)
            logp = _log_softmax(scores)
            if s < len(prefixes[b]):
                (hits,) = np.nonzero(allowed == prefixes[b][s])
                assert len(hits) == 1, f"prefix token {prefixes[b][s]} is outside the constraint"
                j = int(hits[0])
            else:
                j = int(np.argmax(scores))
            logprob[b] += logp[j]
            row.advance(int(allowed[j]))
            tokens[b, 0] = allowed[j]
    assert all(r.path is not None for r in rows), f"a path did not finish in {max_new_tokens} tokens"
    return [(r.path, float(np.exp(lp))) for r, lp in zip(rows, logprob)]


def top_paths(pred: Prediction, completed: Sequence[tuple[tuple[str, ...], float]], k: int) -> tuple:
    """The prediction's path (its probability: the deepest level's) and the completed branches, most probable first,
    k at most, the prediction always among them. Every candidate leaves the greedy path at a different place, so they
    are distinct paths and their probabilities sum to at most 1."""
    own = (pred.label.path, pred.level_probs[-1] if pred.level_probs else pred.confidence)
    best = sorted(completed, key=lambda c: -c[1])[: k - 1]
    return tuple(sorted([own, *best], key=lambda c: -c[1]))


def max_target_length(codec: TargetCodec, taxonomy: Taxonomy) -> int:
    """Longest target a constrained decode can need (path + separator + brand + eos)."""
    longest_path = max(len(codec.path_ids(p)) for p in taxonomy.paths)
    longest_brand = max([len(codec.brand_ids(b)) for b in taxonomy.brands] + [MAX_BRAND_TOKENS])
    return longest_path + longest_brand
