"""The taxonomy constraint compiled to arrays, advanced for a whole batch at once.

A :class:`CompiledTrie` holds token sequences as CSR arrays: node ``n``'s children are the edges
``offsets[n]:offsets[n + 1]`` (tokens ascending, each with its child node), ``value[n]`` the sequence that ends at
the leaf ``n`` and ``[start[n], end[n])`` the leaves under ``n`` (depth-first by token: the sequences'
lexicographic order; a label prior's mass under a node is a difference of cumulative sums) and its forced run
(the tokens that follow with no choice). Tries are built from one sort of the sequences, so the per-request copy
trie (word spans of each row's own title, one root per row, from word token ids kept across requests) costs a
few whole-table numpy operations, not a Python loop over tokens.

:class:`ConstraintState` is every row's place: a node of the path trie, then nodes of the known-brand trie and of
the copy trie (either may run out: its dead node), then done. :meth:`ConstraintState.allowed` gathers the allowed
next tokens of any rows as one edge list, a segment per row; the decode loop scores, picks and advances them with
array ops, and :meth:`ConstraintState.forced` takes the forced runs. An empty allowed set raises: the constraint
never silently lets a row go free.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from shelfml.labels import TargetCodec, Taxonomy

BRAND_MODES = ("known", "known+copy")
COPY_MAX_WORDS = 3
COPY_POSITIONS = 4  # copy classes tell a span's first word apart up to here
COPY_CLASSES = COPY_POSITIONS * COPY_MAX_WORDS
MAX_BRAND_TOKENS = 16  # copied spans longer than this are not offered
WORD_CACHE = 200_000  # title words whose token ids are kept (the cache starts afresh beyond this)
_WORD = re.compile(r"[\w&'.+-]+")  # a title's words, as copy mode splits them
_KEY = np.int64(1 << 32)  # an edge's key: row * _KEY + token (keys ascending = edges by row, then token)


@dataclass(frozen=True)
class CompiledTrie:
    """Token sequences as a prefix trie in CSR arrays (see the module docstring)."""

    offsets: np.ndarray  # int64 [nodes + 1] (the last node is the dead one)
    tokens: np.ndarray  # int64 [edges], ascending within a node
    child: np.ndarray  # int64 [edges]
    value: np.ndarray  # int64 [nodes]: index of the sequence ending at this leaf, else -1
    start: np.ndarray  # int64 [nodes]: first leaf under the node
    end: np.ndarray  # int64 [nodes]: one past its last leaf
    roots: np.ndarray  # int64 [groups]: the root of each group's trie
    n_leaves: int

    @property
    def dead(self) -> int:
        """The last node: no children, no value, no leaves; where a row stands once this trie no longer fits it."""
        return len(self.value) - 1

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], groups: Sequence[int] | None = None,
              n_groups: int = 1) -> tuple["CompiledTrie", np.ndarray]:
        """One trie per group (``groups[i]``: the group of sequence ``i``; one group by default), and the node where
        each sequence ends (a leaf's ``value`` is the first sequence ending there: a later one with the same tokens
        collides with it). The sequences are sorted once
        (by group, then lexicographically): a sorted sequence makes new nodes from its common prefix with the one
        before it on, numbered in that order (depth-first), so every array is a handful of whole-table operations."""
        n = len(sequences)
        group = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64).reshape(n)
        lengths = np.fromiter(map(len, sequences), np.int64, count=n)
        flat = np.fromiter(itertools.chain.from_iterable(sequences), np.int64, count=int(lengths.sum()))
        return cls.from_flat(flat, lengths.cumsum() - lengths, lengths, group, n_groups)

    @classmethod
    def from_flat(cls, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, group: np.ndarray, n_groups: int,
                  end_token: int | None = None) -> tuple["CompiledTrie", np.ndarray]:
        """:meth:`build` from sequences given as ``flat[starts[i] : starts[i] + lengths[i]]`` (then ``end_token``,
        when given, closes each one)."""
        n = len(lengths)
        lengths = lengths + (end_token is not None)
        width = int(lengths.max()) if n else 0
        ids = np.full((n, width), -1, np.int64)
        owner = np.arange(n).repeat(lengths)
        at = np.arange(len(owner)) - (lengths.cumsum() - lengths).repeat(lengths)
        if end_token is None:
            ids[owner, at] = flat[starts.repeat(lengths) + at]
        else:
            last = at == lengths[owner] - 1
            source = flat if len(flat) else np.zeros(1, np.int64)  # every sequence may be the end token alone
            ids[owner, at] = np.where(last, end_token, source[np.minimum(starts.repeat(lengths) + at, len(source) - 1)])
        order = np.lexsort((*_packed(ids)[::-1], group))
        ids, lengths, group = ids[order], lengths[order], group[order]
        lcp = np.zeros(n, np.int64)  # tokens shared with the previous sorted sequence of the same group
        if n > 1:
            lcp[1:] = np.cumprod(ids[1:] == ids[:-1], axis=1).sum(axis=1) * (group[1:] == group[:-1])
        lcp = np.minimum(lcp, lengths)
        duplicate = (lcp == lengths) & (np.arange(n) > 0) & np.append(False, lengths[1:] == lengths[:-1])
        depth = np.arange(width)
        created = (depth >= lcp[:, None]) & (depth < lengths[:, None])  # (sequence, depth) cells that are new nodes
        cell = np.full((n, width), -1, np.int64)
        cell[created] = n_groups + np.arange(int(created.sum()))
        maker = np.maximum.accumulate(np.where(created, np.arange(n)[:, None], 0), axis=0)
        node = np.where(depth < lengths[:, None], cell[maker, depth], -1)  # each sequence's node at each depth
        parent = np.concatenate((group[:, None], node[:, :-1]), axis=1)
        rows, cols = np.nonzero(created)
        edge_parent, count = parent[rows, cols], n_groups + len(rows)
        by_parent = np.argsort(edge_parent, kind="stable")  # a parent's children come in token order already
        offsets = np.zeros(count + 2, np.int64)
        offsets[1:-1] = np.bincount(edge_parent, minlength=count).cumsum()
        offsets[-1] = offsets[-2]  # the dead node: no edges
        ends = np.where(lengths > 0, node[np.arange(n), np.maximum(lengths - 1, 0)], group) if width else group
        value = np.full(count + 1, -1, np.int64)
        value[ends[~duplicate]] = order[~duplicate]  # a stable sort: the first of equal sequences comes first
        start, end = np.zeros(count + 1, np.int64), np.zeros(count + 1, np.int64)
        rank = (~duplicate).cumsum() - 1
        leaves = int((~duplicate).sum())
        after = np.where(lcp[:, None] <= depth, np.arange(n)[:, None], n)  # next sequence leaving each node
        after = np.vstack((np.minimum.accumulate(after[::-1], axis=0)[::-1][1:], np.full((1, width), n)))
        start[n_groups:count] = rank[rows]
        end[n_groups:count] = np.where(after[rows, cols] < n, rank[np.minimum(after[rows, cols], n - 1)], leaves)
        if n:  # each root: the leaves of its group
            firsts = np.searchsorted(group, np.arange(n_groups))
            lasts = np.searchsorted(group, np.arange(n_groups), side="right")
            start[:n_groups] = np.where(firsts < n, rank[np.minimum(firsts, n - 1)], leaves)
            end[:n_groups] = np.where(lasts > firsts, rank[np.maximum(lasts - 1, 0)] + 1, start[:n_groups])
        trie = cls(offsets, ids[rows, cols][by_parent], (n_groups + np.arange(len(rows)))[by_parent], value, start,
                   end, np.arange(n_groups, dtype=np.int64), leaves)
        in_order = np.empty(n, np.int64)
        in_order[order] = ends
        return trie, in_order

    def degree(self, nodes: np.ndarray) -> np.ndarray:
        return self.offsets[nodes + 1] - self.offsets[nodes]

    def gather(self, rows: np.ndarray, nodes: np.ndarray, field: int, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The edges leaving ``nodes[i]`` (owned by ``rows[i]``) as a ``[5, edges]`` block (row, token, the children
        in rows 2-4: this trie's in row ``field``, ``fill`` in the others; see :class:`Edges`), and each node's edge
        count."""
        lo = self.offsets[nodes]
        counts = self.offsets[nodes + 1] - lo
        edge = (lo - counts.cumsum() + counts).repeat(counts) + np.arange(counts.sum())
        block = np.empty((5, len(edge)), np.int64)
        block[2:] = np.asarray(fill, np.int64)[:, None]
        block[0], block[1], block[field] = rows.repeat(counts), self.tokens[edge], self.child[edge]
        return block, counts

    @cached_property
    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Forced runs, by pointer jumping: per node, how many tokens follow with no choice (it and each node after
        it has exactly one child), the node where that stops, where those tokens start in the fourth array, and that
        array (each maximal chain of one-child nodes stored once; a node's run is a suffix of its chain's)."""
        n = len(self.value)
        nodes = np.arange(n, dtype=np.int64)
        deg = np.diff(self.offsets)
        single = deg == 1
        first = np.minimum(self.offsets[:-1], max(len(self.tokens) - 1, 0))
        only = self.child[first] if len(self.tokens) else nodes  # the one child, where there is one
        length, end = single.astype(np.int64), np.where(single, only, nodes)
        while (length[end] > 0).any():
            length, end = length + length[end], end[end]
        parent = nodes.copy()
        parent[self.child] = np.repeat(nodes, deg)
        head = np.where(single & single[parent] & (parent != nodes), parent, nodes)
        while (head[head] != head).any():
            head = head[head]
        heads = single & (head == nodes)
        chain_start = np.zeros(n, np.int64)
        chain_start[heads] = np.cumsum(length[heads]) - length[heads]
        at = chain_start[head] + length[head] - length
        tokens = np.zeros(int(single.sum()), np.int64)
        tokens[at[single]] = self.tokens[first[single]]
        return length, end, at, tokens


def _packed(ids: np.ndarray) -> list[np.ndarray]:
    """Sort keys of padded token rows, three tokens per int64 (21 bits each, the -1 pad lowest): the same order as
    the tokens column by column, in a third of the keys."""
    shifted = ids + 1
    if shifted.shape[1] % 3:
        shifted = np.pad(shifted, ((0, 0), (0, 3 - shifted.shape[1] % 3)))
    assert shifted.max(initial=0) < 1 << 21, "token ids beyond 2**21 - 2"
    return [(shifted[:, k] << 42) | (shifted[:, k + 1] << 21) | shifted[:, k + 2] for k in range(0, shifted.shape[1], 3)]


def span_candidates(text: str) -> list[str]:
    """Word spans (1 to ``COPY_MAX_WORDS`` words) of a title: the brands copy mode may write."""
    return sorted({span for span, _, _ in positioned_spans(text)})


def positioned_spans(text: str) -> list[tuple[str, int, int]]:
    """(span, first word, words) of every span of ``text``, each distinct span once at its first place."""
    words, seen, out = _WORD.findall(text), set(), []
    for i in range(len(words)):
        for n in range(1, min(COPY_MAX_WORDS, len(words) - i) + 1):
            span = " ".join(words[i : i + n])
            if span not in seen:
                seen.add(span)
                out.append((span, i, n))
    return out


def copy_class(text: str, brand: str) -> int:
    """The copy class of ``brand`` in ``text`` (see :func:`copy_class_of`): where it is first written as a span,
    case-insensitively; -1 when it is not (or is empty)."""
    target = brand.lower()
    for span, first, size in positioned_spans(text.lower()) if brand else []:
        if span == target:
            return int(copy_class_of(np.array([first]), np.array([size]))[0])
    return -1


def copy_class_of(first: np.ndarray, size: np.ndarray) -> np.ndarray:
    """A span's copy class: its first word (``COPY_POSITIONS - 1`` and later share a class) and its length;
    ``COPY_CLASSES`` in all. A label prior gives each class a probability (the brand is the span of that shape)."""
    return np.minimum(first, COPY_POSITIONS - 1) * COPY_MAX_WORDS + size - 1


class Edges:
    """The allowed next tokens of some rows, one contiguous segment per row (tokens ascending within it): a
    ``[5, edges]`` block of each edge's row, token and child in the path trie, the known-brand trie and the copy
    trie (that trie's dead node where it does not continue)."""

    __slots__ = ("block", "rows", "starts", "counts")

    def __init__(self, block: np.ndarray, rows: np.ndarray, counts: np.ndarray, starts: np.ndarray | None = None):
        self.block, self.rows, self.counts = block, rows, counts
        self.starts = counts.cumsum() - counts if starts is None else starts

    row = property(lambda self: self.block[0])
    token = property(lambda self: self.block[1])
    path = property(lambda self: self.block[2])
    known = property(lambda self: self.block[3])
    copy = property(lambda self: self.block[4])

    def take(self, segments: np.ndarray) -> "Edges":
        """The same edges with only some segments addressed (indexing into the same block)."""
        return Edges(self.block, self.rows[segments], self.counts[segments], self.starts[segments])


class LabelConstraint:
    """The compiled path trie and known-brand trie of a taxonomy (and, in ``known+copy`` mode, a copy trie per
    request): :meth:`start` gives a batch its :class:`ConstraintState`."""

    def __init__(self, codec: TargetCodec, taxonomy: Taxonomy, brand_mode: str = "known+copy") -> None:
        if brand_mode not in BRAND_MODES:
            raise ValueError(f"brand_mode must be one of {BRAND_MODES}, got {brand_mode!r}")
        self.codec, self.taxonomy, self.brand_mode = codec, taxonomy, brand_mode
        self.paths, path_ends = CompiledTrie.build([codec.path_ids(p) for p in taxonomy.paths])
        self.collisions = [taxonomy.paths[i] for i in np.flatnonzero(self.paths.value[path_ends] !=
                                                                     np.arange(len(path_ends)))]
        self.brand_values = [""] + list(taxonomy.brands)
        self.brands, brand_ends = CompiledTrie.build(codec.brand_ids_many(self.brand_values))
        self.n_path_leaves, self.n_brand_leaves = self.paths.n_leaves, self.brands.n_leaves
        # the leaf of each taxonomy path / brand ("" first), where a prior's probability of it goes
        self.path_leaf, self.brand_leaf = self.paths.start[path_ends], self.brands.start[brand_ends]
        self._splits_words = _splits_words(codec)
        self._word_ids: dict[str, list[int]] = {}

    def cumulative(self, prior) -> tuple[np.ndarray, np.ndarray]:
        """Per row, cumulative prior mass over the path leaves and the brand leaves (a leading 0)."""
        def cum(probs: np.ndarray, leaf: np.ndarray, n: int) -> np.ndarray:
            mass = np.zeros((len(probs), n + 1))
            np.add.at(mass, (slice(None), leaf + 1), probs)
            return np.cumsum(mass, axis=1)

        return cum(prior.paths, self.path_leaf, self.n_path_leaves), cum(prior.brands, self.brand_leaf,
                                                                         self.n_brand_leaves)

    def copy_trie(self, texts: Sequence[str]) -> "CopySpans":
        """Every row's title spans (1 to ``COPY_MAX_WORDS`` words, each closed by end-of-sequence, at most
        ``MAX_BRAND_TOKENS`` tokens) compiled into one trie with a root per row (in ``known`` mode: no spans)."""
        if self.brand_mode != "known+copy":
            trie, ends = CompiledTrie.build([], n_groups=len(texts))
            return CopySpans(trie, [], ends, np.zeros(0, np.int64), np.zeros(0, np.int64))
        if not self._splits_words:  # every span tokenised on its own
            spans = [positioned_spans(t) for t in texts]
            flat = [s for row in spans for s, _, _ in row]
            ids = self.codec.brand_ids_many(flat) if flat else []
            keep = [i for i, seq in enumerate(ids) if len(seq) <= MAX_BRAND_TOKENS]
            groups = np.repeat(np.arange(len(texts)), [len(s) for s in spans])[keep]
            shape = np.array([(i, n) for row in spans for _, i, n in row], np.int64).reshape(-1, 2)[keep]
            trie, ends = CompiledTrie.build([ids[i] for i in keep], groups, len(texts))
            return CopySpans(trie, [flat[i] for i in keep], ends, groups, copy_class_of(shape[:, 0], shape[:, 1]))
        words = [_WORD.findall(t) for t in texts]
        every = [w for row in words for w in row]
        row_of = np.arange(len(texts)).repeat([len(w) for w in words])
        pieces = self.word_ids(every)
        word_len = np.fromiter(map(len, pieces), np.int64, count=len(pieces))
        flat = np.fromiter(itertools.chain.from_iterable(pieces), np.int64, count=int(word_len.sum()))
        offset = np.append(0, word_len.cumsum())
        first, size = [], []
        for n in range(1, COPY_MAX_WORDS + 1):  # spans of n words: consecutive words of one row
            g = np.arange(max(len(every) - n + 1, 0))
            g = g[row_of[g] == row_of[g + n - 1]]
            first.append(g), size.append(np.full(len(g), n))
        first, size = np.concatenate(first), np.concatenate(size)
        tokens = offset[first + size] - offset[first]
        keep = tokens + 1 <= MAX_BRAND_TOKENS
        first, size, tokens = first[keep], size[keep], tokens[keep]
        trie, ends = CompiledTrie.from_flat(flat, offset[first], tokens, row_of[first], len(texts), self.codec.eos_id)
        row_first = np.append(0, np.cumsum([len(w) for w in words]))[:-1]  # each row's first word in ``every``
        return CopySpans(trie, _Spans(every, first, size), ends, row_of[first],
                         copy_class_of(first - row_first[row_of[first]], size))

    def word_ids(self, words: Sequence[str]) -> list[list[int]]:
        """Each word's token ids (no end-of-sequence), tokenised once and kept (catalogs repeat their words)."""
        todo = sorted(set(words) - self._word_ids.keys())
        if len(self._word_ids) + len(todo) > WORD_CACHE:
            self._word_ids = {}
            todo = sorted(set(words))
        for word, ids in zip(todo, self.codec.brand_ids_many(todo)):
            self._word_ids[word] = ids[:-1]
        return [self._word_ids[w] for w in words]

    def start(self, texts: Sequence[str]) -> "ConstraintState":
        """Fresh decode state for each input text."""
        return ConstraintState(self, self.copy_trie(texts), len(texts))


@dataclass(frozen=True)
class CopySpans:
    """A batch's copy trie and its spans: the text, end node, row and copy class of each."""

    trie: CompiledTrie
    values: Sequence[str]
    ends: np.ndarray  # int64 [spans]: the node where each span ends (equal spans of a row: one leaf)
    rows: np.ndarray  # int64 [spans]
    classes: np.ndarray  # int64 [spans]: :func:`copy_class_of`

    def cumulative(self, probs: np.ndarray) -> np.ndarray:
        """Cumulative prior mass over the trie's leaves (a leading 0; the rows' leaves are consecutive): each span
        gets its row's probability of its copy class (``probs``: ``[rows, COPY_CLASSES]``), shared equally by the
        row's spans of that class; a span written twice counts once, at its first place."""
        mass = np.zeros(self.trie.n_leaves + 1)
        if len(self.rows):
            first = np.unique(self.ends, return_index=True)[1]  # spans come by length, then place
            rows, classes = self.rows[first], self.classes[first]
            _, inverse, counts = np.unique(rows * COPY_CLASSES + classes, return_inverse=True, return_counts=True)
            mass[self.trie.start[self.ends[first]] + 1] = probs[rows, classes] / counts[inverse]
        return np.cumsum(mass)


class _Spans:
    """The text of copy span ``i`` (``size[i]`` words from word ``first[i]``), made only when a row ends on it."""

    def __init__(self, words: list[str], first: np.ndarray, size: np.ndarray) -> None:
        self.words, self.first, self.size = words, first, size

    def __getitem__(self, i: int) -> str:
        return " ".join(self.words[self.first[i] : self.first[i] + self.size[i]])


def _splits_words(codec: TargetCodec) -> bool:
    """Whether the tokenizer splits text on whitespace before its model, so a span's ids are its words' ids one
    after another (checked on a few spans too)."""
    backend = getattr(codec.tokenizer, "backend_tokenizer", None)
    pre = repr(getattr(backend, "pre_tokenizer", None))
    splits = ("Metaspace(" in pre and "split=True" in pre and "prepend_scheme=always" in pre) or \
        pre.startswith(("WhitespaceSplit(", "Whitespace("))
    probes = ["Acme Pro 3000", "bamboo-fibre baby wipes", "L'Oreal Paris", "5 x 100g"]
    return splits and all(codec.brand_ids(p)[:-1] == [t for w in p.split(" ") for t in codec.brand_ids(w)[:-1]]
                          for p in probes)


class ConstraintState:
    """Every row's place in the constraint: ``node[0]`` in the path trie, then ``node[1]`` in the known-brand trie
    and ``node[2]`` in the copy trie (a trie's dead node: not there yet, or that trie ran out); ``path[b]`` and
    ``brand[b]`` once decided. A path is decided at a leaf of the path trie, a brand at a leaf of either brand trie
    (the known brand when both end)."""

    def __init__(self, constraint: LabelConstraint, copy: CopySpans, n: int) -> None:
        self.c, self.n, self.copy = constraint, n, copy
        copy_trie, self.copy_values = copy.trie, copy.values
        self.tries = (constraint.paths, constraint.brands, copy_trie)
        self.dead = np.array([t.dead for t in self.tries], np.int64)
        self.node = np.repeat(self.dead[:, None], n, axis=1)
        self.node[0] = constraint.paths.roots[0]
        self.path: list[tuple[str, ...] | None] = [None] * n
        self.brand: list[str | None] = [None] * n
        self.path_done, self.done = np.zeros(n, bool), np.zeros(n, bool)

    def _gather(self, t: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The edges of ``rows``' nodes in trie ``t`` as a block (the other tries' children: their dead nodes)."""
        return self.tries[t].gather(rows, self.node[t, rows], 2 + t, self.dead)

    def allowed(self, rows: np.ndarray) -> Edges:
        """The allowed next tokens of ``rows`` (none done): path rows' segments first, then brand rows'; raises
        when a row has none."""
        rows = np.asarray(rows, np.int64)
        on_path = ~self.path_done[rows]
        if on_path.all():
            block, counts = self._gather(0, rows)
        elif not on_path.any():
            block, counts = self._brand_edges(rows)
        else:
            pr, br = rows[on_path], rows[~on_path]
            (b1, c1), (b2, c2) = self._gather(0, pr), self._brand_edges(br)
            block, counts, rows = np.concatenate((b1, b2), axis=1), np.concatenate((c1, c2)), np.concatenate((pr, br))
        if not counts.all():
            raise RuntimeError(f"rows {rows[counts == 0].tolist()}: the constraint allows no next token "
                               "(a broken trie or a finished row)")
        return Edges(block, rows, counts)

    def _brand_edges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Known-brand and copy edges of ``rows`` as one block, a token both tries offer once (with both children)."""
        (kb, kc), (cb, cc) = self._gather(1, rows), self._gather(2, rows)
        if not cb.shape[1] or not kb.shape[1]:
            return (kb, kc) if cb.shape[1] == 0 else (cb, cc)
        segment = np.arange(len(rows))
        keys = np.concatenate((segment.repeat(kc) * _KEY + kb[1], segment.repeat(cc) * _KEY + cb[1]))
        order = keys.argsort(kind="stable")  # by row, then token; a known edge before the copy edge of its token
        block, keys = np.concatenate((kb, cb), axis=1)[:, order], keys[order]
        twin = np.flatnonzero(keys[1:] == keys[:-1])
        if not len(twin):
            return block, kc + cc
        block[4, twin] = block[4, twin + 1]
        return np.delete(block, twin + 1, axis=1), kc + cc - np.bincount(keys[twin] // _KEY, minlength=len(rows))

    def forced(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance ``rows`` (none done) through the tokens the constraint forces (exactly one allowed continuation)
        to their next choice or their end: (the rows that moved, how many tokens each, those tokens row after row).
        A run inside one trie is taken whole (:attr:`CompiledTrie.runs`), so it ends at a choice or a leaf; a row
        whose path ends goes on to the brand tries, and where both brand tries are live they move one token at a
        time while they agree on it."""
        rows = np.asarray(rows, np.int64)
        out = []
        on_path = ~self.path_done[rows]
        if on_path.any():
            pr = rows[on_path]
            moved, lengths, tokens, end = _run(self.c.paths, pr, self.node[0, pr])
            self.node[0, moved] = end
            out.append((moved, lengths, tokens))
            rows = np.concatenate((rows[~on_path], self._settle(moved)[0]))
        while len(rows):  # brand rows: a run in the one live trie, or a token both live tries agree on
            k, c = self.node[1, rows], self.node[2, rows]
            kd, cd = self.c.brands.degree(k), self.tries[2].degree(c)
            both = (kd == 1) & (cd == 1)
            for t, alone in ((1, cd == 0), (2, kd == 0)):
                if alone.any():
                    moved, lengths, tokens, end = _run(self.tries[t], rows[alone], self.node[t, rows[alone]])
                    self.node[t, moved] = end
                    out.append((moved, lengths, tokens))
            if both.any():
                k, c = k[both], c[both]
                same = self.c.brands.tokens[self.c.brands.offsets[k]] == self.tries[2].tokens[self.tries[2].offsets[c]]
                moved, k, c = rows[both][same], k[same], c[same]
                out.append((moved, np.ones(len(moved), np.int64), self.c.brands.tokens[self.c.brands.offsets[k]]))
                self.node[1, moved] = self.c.brands.child[self.c.brands.offsets[k]]
                self.node[2, moved] = self.tries[2].child[self.tries[2].offsets[c]]
            else:
                moved = rows[:0]
            self._settle(rows)
            rows = moved[~self.done[moved]]
        out = [o for o in out if len(o[0])]
        if not out:
            return rows[:0], rows[:0], rows[:0]
        if len(out) == 1:
            return out[0]
        return _group_runs(*zip(*out))

    def cumulative(self, prior) -> tuple:
        """Per row, cumulative prior mass over the path leaves and the known-brand leaves (a leading 0), and over
        the copy trie's leaves when the prior gives copy classes (else None)."""
        paths, brands = self.c.cumulative(prior)
        return paths, brands, None if prior.copy is None else self.copy.cumulative(prior.copy)

    def log_mass(self, edges: Edges, cum: tuple) -> np.ndarray:
        """log of each edge's prior mass: the paths (known brands, copied spans) under its child, a token both brand
        tries offer both masses. A prior without copy classes gives a span only the copy trie offers one brand's
        share, and a token both tries offer the larger of the two."""
        paths, brands, copied = self.c.paths, self.c.brands, self.tries[2]
        rows, path, known, copy = edges.row, edges.path, edges.known, edges.copy
        mass = (cum[0][rows, paths.end[path]] - cum[0][rows, paths.start[path]]
                + cum[1][rows, brands.end[known]] - cum[1][rows, brands.start[known]])  # a dead child adds 0
        if cum[2] is not None:
            mass = mass + cum[2][copied.end[copy]] - cum[2][copied.start[copy]]
        else:
            live = copy != self.dead[2]
            if live.any():
                mass[live] = np.maximum(mass[live], 1.0 / max(self.c.n_brand_leaves, 1))
        return np.log(np.maximum(mass, 1e-12))

    def find(self, edges: Edges, tokens: Sequence[int]) -> np.ndarray:
        """The edge of each of ``edges.rows`` that emits ``tokens[i]``; raises for a token outside the constraint."""
        tokens = np.asarray(tokens, np.int64).reshape(len(edges.rows))
        picks = np.empty(len(edges.rows), np.int64)
        for i, (lo, count, token) in enumerate(zip(edges.starts.tolist(), edges.counts.tolist(), tokens.tolist())):
            j = lo + int(np.searchsorted(edges.token[lo : lo + count], token))
            if j >= lo + count or edges.token[j] != token:
                raise ValueError(f"token {token} of row {int(edges.rows[i])} is outside the constraint")
            picks[i] = j
        return picks

    def advance(self, edges: Edges, picks: np.ndarray) -> None:
        """Each of ``edges.rows`` takes its edge ``picks[i]``."""
        self.node[:, edges.rows] = edges.block[2:, picks]
        self._settle(edges.rows)

    def _settle(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decide what ``rows`` have reached: a path at a path leaf (the brand tries start at their roots), a brand
        at a brand leaf (the row is done). Returns (rows whose path ended, rows whose brand ended)."""
        paths, brands, copy = self.tries
        node = self.node[:, rows]
        ended = paths.value[node[0]] >= 0
        if ended.any():
            er = rows[ended]
            for b, v in zip(er.tolist(), paths.value[node[0, ended]].tolist()):
                self.path[b] = self.c.taxonomy.paths[v]
            self.path_done[er] = True
            self.node[0, er], self.node[1, er], self.node[2, er] = self.dead[0], brands.roots[0], copy.roots[er]
        known, copied = brands.value[node[1]], copy.value[node[2]]
        finished = (known >= 0) | (copied >= 0)
        if not finished.any():
            return rows[ended], rows[:0]
        fr = rows[finished]
        for b, k, c in zip(fr.tolist(), known[finished].tolist(), copied[finished].tolist()):
            self.brand[b] = self.c.brand_values[k] if k >= 0 else self.copy_values[c]
        self.done[fr] = True
        return rows[ended], fr


def _run(trie: CompiledTrie, rows: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The rows whose node starts a forced run in ``trie``: (those rows, run lengths, their tokens, end nodes)."""
    length, end, at, tokens = trie.runs
    moving = length[nodes] > 0
    rows, nodes = rows[moving], nodes[moving]
    lengths = length[nodes]
    index = (at[nodes] - lengths.cumsum() + lengths).repeat(lengths) + np.arange(lengths.sum())
    return rows, lengths, tokens[index], end[nodes]


def _group_runs(moved: Sequence, lengths: Sequence, tokens: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs found in several passes (a row may move in more than one) as one run per row, in pass order."""
    rows, counts, flat = np.concatenate(moved), np.concatenate(lengths), np.concatenate(tokens)
    owner = rows.repeat(counts)
    order = owner.argsort(kind="stable")
    unique = np.unique(rows)
    return unique, np.bincount(owner, minlength=int(rows.max()) + 1)[unique], flat[order]
