"""The taxonomy constraint compiled to arrays, advanced for a whole batch at once.

A :class:`CompiledTrie` holds token sequences as CSR arrays: node ``n``'s children are the edges
``offsets[n]:offsets[n + 1]`` (tokens ascending, each with its child node), ``value[n]`` the sequence that ends at
the leaf ``n`` and ``[start[n], end[n])`` the leaves under ``n`` (depth-first by token: the sequences'
lexicographic order; a label prior's mass under a node is a difference of cumulative sums). Tries are built
vectorised by depth, so the per-request copy trie (word spans of each row's own title, one root per row) costs a
few numpy calls, not a Python loop over tokens.

:class:`ConstraintState` is every row's place: a node of the path trie, then nodes of the known-brand trie and of
the copy trie (either may run out), then done. :meth:`ConstraintState.allowed` gathers the allowed next tokens of
any rows as one edge list sorted by (row, token); the decode loop scores, picks and advances them with array ops.
An empty allowed set raises: the constraint never silently lets a row go free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from shelfml.labels import TargetCodec, Taxonomy

BRAND_MODES = ("known", "known+copy")
COPY_MAX_WORDS = 3
MAX_BRAND_TOKENS = 16  # copied spans longer than this are not offered
_KEY = np.int64(1 << 32)  # an edge's key: row * _KEY + token (keys ascending = edges by row, then token)


@dataclass(frozen=True)
class CompiledTrie:
    """Token sequences as a prefix trie in CSR arrays (see the module docstring)."""

    offsets: np.ndarray  # int64 [nodes + 1]
    tokens: np.ndarray  # int64 [edges], ascending within a node
    child: np.ndarray  # int64 [edges]
    value: np.ndarray  # int64 [nodes]: index of the sequence ending at this leaf, else -1
    start: np.ndarray  # int64 [nodes]: first leaf under the node
    end: np.ndarray  # int64 [nodes]: one past its last leaf
    roots: np.ndarray  # int64 [groups]: the root of each group's trie
    n_leaves: int

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], groups: Sequence[int] | None = None,
              n_groups: int = 1) -> tuple["CompiledTrie", list[int]]:
        """One trie per group (``groups[i]``: the group of sequence ``i``; one group by default), and the indices of
        the sequences dropped because an earlier one has the same tokens (collisions)."""
        n = len(sequences)
        group = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64).reshape(n)
        lengths = np.array([len(s) for s in sequences], np.int64).reshape(n)
        ids = np.full((n, int(lengths.max()) if n else 0), -1, np.int64)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = seq
        roots = np.arange(n_groups, dtype=np.int64)
        node = roots[group]
        walk = [(np.arange(n), node.copy())]  # (sequences, their node) per depth, the roots first
        keys, children, count = [], [], n_groups
        for d in range(ids.shape[1]):
            live = np.flatnonzero(lengths > d)
            unique, inverse = np.unique(node[live] * _KEY + ids[live, d], return_inverse=True)
            keys.append(unique)
            children.append(np.arange(count, count + len(unique), dtype=np.int64))
            node[live] = children[-1][inverse.reshape(-1)]
            walk.append((live, node[live]))
            count += len(unique)
        edge_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        order = np.argsort(edge_keys, kind="stable")
        offsets = np.zeros(count + 1, np.int64)
        np.add.at(offsets, edge_keys // _KEY + 1, 1)
        first = np.full(count, n, np.int64)
        np.minimum.at(first, node, np.arange(n))  # the first sequence ending at each node
        value = np.where(first < n, first, -1)
        start, end, n_leaves = _leaf_ranges(ids, group, node, walk, count)
        trie = cls(np.cumsum(offsets), edge_keys[order] % _KEY,
                   np.concatenate(children)[order] if children else edge_keys, value, start, end, roots, n_leaves)
        return trie, [i for i in range(n) if first[node[i]] != i]

    def degree(self, nodes: np.ndarray) -> np.ndarray:
        return self.offsets[nodes + 1] - self.offsets[nodes]

    def gather(self, rows: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, token, child) of every edge leaving ``nodes[i]`` (owned by ``rows[i]``), in that order."""
        lo, counts = self.offsets[nodes], self.degree(nodes)
        edge = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()), dtype=np.int64)
        return np.repeat(rows, counts), self.tokens[edge], self.child[edge]


def _leaf_ranges(ids: np.ndarray, group: np.ndarray, ends: np.ndarray, walk: list, count: int
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per node, the range of leaves under it: leaves are the distinct sequences in (group, tokens) lexicographic
    order (the depth-first order by token), so the sequences through a node are contiguous in it."""
    start, end = np.zeros(count, np.int64), np.zeros(count, np.int64)
    if not len(ends):
        return start, end, 0
    order = np.lexsort([ids[:, d] for d in range(ids.shape[1] - 1, -1, -1)] + [group])
    fresh = np.ones(len(order), bool)
    fresh[1:] = ends[order][1:] != ends[order][:-1]  # equal sequences are adjacent and share a leaf
    rank = np.empty(len(order), np.int64)
    rank[order] = np.cumsum(fresh) - 1
    start[:] = np.iinfo(np.int64).max
    for live, nodes in walk:
        np.minimum.at(start, nodes, rank[live])
        np.maximum.at(end, nodes, rank[live] + 1)
    return start, end, int(fresh.sum())


def span_candidates(text: str) -> list[str]:
    """Word spans (1 to ``COPY_MAX_WORDS`` words) of a title: the brands copy mode may write."""
    words = re.findall(r"[\w&'.+-]+", text)
    spans = {" ".join(words[i : i + n]) for n in range(1, COPY_MAX_WORDS + 1) for i in range(len(words) - n + 1)}
    return sorted(spans)


class Edges(NamedTuple):
    """The allowed next tokens of some rows, sorted by (row, token): each edge's child in the path trie, the
    known-brand trie and the copy trie (-1 where that trie does not continue)."""

    row: np.ndarray
    token: np.ndarray
    path: np.ndarray
    known: np.ndarray
    copy: np.ndarray
    rows: np.ndarray  # the rows, ascending
    starts: np.ndarray  # index of each row's first edge

    @property
    def counts(self) -> np.ndarray:
        return np.diff(np.append(self.starts, len(self.row)))


class LabelConstraint:
    """The compiled path trie and known-brand trie of a taxonomy (and, in ``known+copy`` mode, a copy trie per
    request): :meth:`start` gives a batch its :class:`ConstraintState`."""

    def __init__(self, codec: TargetCodec, taxonomy: Taxonomy, brand_mode: str = "known+copy") -> None:
        if brand_mode not in BRAND_MODES:
            raise ValueError(f"brand_mode must be one of {BRAND_MODES}, got {brand_mode!r}")
        self.codec, self.taxonomy, self.brand_mode = codec, taxonomy, brand_mode
        self.paths, dropped = CompiledTrie.build([codec.path_ids(p) for p in taxonomy.paths])
        self.collisions = [taxonomy.paths[i] for i in dropped]
        self.brand_values = [""] + list(taxonomy.brands)
        brand_ids = codec.brand_ids_many(self.brand_values)
        self.brands, _ = CompiledTrie.build(brand_ids)
        self.n_path_leaves, self.n_brand_leaves = self.paths.n_leaves, self.brands.n_leaves
        # the leaf of each taxonomy path / brand ("" first), where a prior's probability of it goes
        self.path_leaf = self.paths.start[_ends(self.paths, [codec.path_ids(p) for p in taxonomy.paths])]
        self.brand_leaf = self.brands.start[_ends(self.brands, brand_ids)]

    def cumulative(self, prior) -> tuple[np.ndarray, np.ndarray]:
        """Per row, cumulative prior mass over the path leaves and the brand leaves (a leading 0)."""
        def cum(probs: np.ndarray, leaf: np.ndarray, n: int) -> np.ndarray:
            mass = np.zeros((len(probs), n + 1))
            np.add.at(mass, (slice(None), leaf + 1), probs)
            return np.cumsum(mass, axis=1)

        return cum(prior.paths, self.path_leaf, self.n_path_leaves), cum(prior.brands, self.brand_leaf,
                                                                         self.n_brand_leaves)

    def copy_trie(self, texts: Sequence[str]) -> tuple[CompiledTrie, list[str]] | None:
        """Every row's title spans compiled into one trie with a root per row (None in ``known`` mode)."""
        if self.brand_mode != "known+copy":
            return None
        spans = [span_candidates(t) for t in texts]
        flat = [s for row in spans for s in row]
        ids = self.codec.brand_ids_many(flat) if flat else []
        keep = [i for i, seq in enumerate(ids) if len(seq) <= MAX_BRAND_TOKENS]
        groups = np.repeat(np.arange(len(texts)), [len(s) for s in spans])[keep]
        trie, _ = CompiledTrie.build([ids[i] for i in keep], groups, len(texts))
        return trie, [flat[i] for i in keep]

    def start(self, texts: Sequence[str]) -> "ConstraintState":
        """Fresh decode state for each input text."""
        return ConstraintState(self, self.copy_trie(texts), len(texts))


def _ends(trie: CompiledTrie, sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """The node where each sequence ends (walked through the CSR arrays)."""
    out = np.empty(len(sequences), np.int64)
    for i, seq in enumerate(sequences):
        node = int(trie.roots[0])
        for token in seq:
            lo, hi = trie.offsets[node], trie.offsets[node + 1]
            node = int(trie.child[lo + np.searchsorted(trie.tokens[lo:hi], token)])
        out[i] = node
    return out


class ConstraintState:
    """Every row's place in the constraint: ``path_node`` (-1 once the path is complete), then ``known`` and
    ``copy`` nodes (-1: that trie ran out or is not in use); ``path[b]`` and ``brand[b]`` once decided."""

    def __init__(self, constraint: LabelConstraint, copy: tuple[CompiledTrie, list[str]] | None, n: int) -> None:
        self.c, self.n = constraint, n
        self.copy_trie, self.copy_values = copy if copy is not None else (None, [])
        self.path_node = np.full(n, int(constraint.paths.roots[0]), np.int64)
        self.known, self.copy = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        self.path: list[tuple[str, ...] | None] = [None] * n
        self.brand: list[str | None] = [None] * n
        self.path_done, self.done = np.zeros(n, bool), np.zeros(n, bool)

    def allowed(self, rows: np.ndarray) -> Edges:
        """The allowed next tokens of ``rows`` (ascending, not done); raises when a row has none."""
        rows = np.asarray(rows, np.int64)
        on_path = rows[~self.path_done[rows]]
        r, t, p = self.c.paths.gather(on_path, self.path_node[on_path])
        path = _edges(r, t, p, -np.ones_like(r), -np.ones_like(r))
        brand_rows = rows[self.path_done[rows]]
        with_known = brand_rows[self.known[brand_rows] >= 0]
        r, t, k = self.c.brands.gather(with_known, self.known[with_known])
        brand = _edges(r, t, -np.ones_like(r), k, -np.ones_like(r))
        if self.copy_trie is not None:
            with_copy = brand_rows[self.copy[brand_rows] >= 0]
            r, t, c = self.copy_trie.gather(with_copy, self.copy[with_copy])
            brand = _merge(brand, _edges(r, t, -np.ones_like(r), -np.ones_like(r), c), into="copy")
        edges = _merge(path, brand, into=None)
        present = np.unique(edges[0])
        if len(present) < len(rows):
            empty = sorted(set(rows.tolist()) - set(present.tolist()))
            raise RuntimeError(f"rows {empty}: the constraint allows no next token (a broken trie or a finished row)")
        starts = np.searchsorted(edges[0], rows)
        return Edges(*edges, rows, starts)

    def log_mass(self, edges: Edges, cum: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """log of each edge's prior mass: the paths (known brands) under its child; a span only the copy trie
        offers gets one brand's share, and a token both tries offer the larger of the two."""
        mass = np.zeros(len(edges.row))
        for child, trie, table in ((edges.path, self.c.paths, cum[0]), (edges.known, self.c.brands, cum[1])):
            on = np.flatnonzero(child >= 0)
            rows, nodes = edges.row[on], child[on]
            mass[on] = table[rows, trie.end[nodes]] - table[rows, trie.start[nodes]]
        copy_only = edges.copy >= 0
        mass[copy_only] = np.maximum(mass[copy_only], 1.0 / max(self.c.n_brand_leaves, 1))
        return np.log(np.maximum(mass, 1e-12))

    def find(self, edges: Edges, tokens: np.ndarray) -> np.ndarray:
        """The edge of each of ``edges.rows`` that emits ``tokens[i]``; raises for a token outside the constraint."""
        keys, wanted = edges.row * _KEY + edges.token, edges.rows * _KEY + np.asarray(tokens, np.int64)
        picks = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        bad = keys[picks] != wanted
        if bad.any():
            raise ValueError(f"token {int(np.asarray(tokens)[bad][0])} of row {int(edges.rows[bad][0])} is outside "
                             "the constraint")
        return picks

    def advance(self, edges: Edges, picks: np.ndarray) -> None:
        """Each of ``edges.rows`` takes its edge ``picks[i]``: a path completes at a leaf of the path trie (then
        the brand tries start), a brand at a leaf of either brand trie (the known brand first)."""
        rows = edges.rows
        on_path = ~self.path_done[rows]
        pr, node = rows[on_path], edges.path[picks[on_path]]
        self.path_node[pr] = node
        leaf = self.c.paths.degree(node) == 0
        for b, v in zip(pr[leaf].tolist(), self.c.paths.value[node[leaf]].tolist()):
            self.path[b] = self.c.taxonomy.paths[v]
        ended = pr[leaf]
        self.path_done[ended], self.path_node[ended] = True, -1
        self.known[ended] = self.c.brands.roots[0]
        if self.copy_trie is not None:
            self.copy[ended] = self.copy_trie.roots[ended]
        br, e = rows[~on_path], picks[~on_path]
        self.known[br], self.copy[br] = edges.known[e], edges.copy[e]
        self._finish_brands(br)

    def _finish_brands(self, rows: np.ndarray) -> None:
        for b in rows.tolist():
            k, c = int(self.known[b]), int(self.copy[b])
            if k >= 0 and self.c.brands.degree(np.array([k]))[0] == 0:
                self.brand[b] = self.c.brand_values[self.c.brands.value[k]]
            elif c >= 0 and self.copy_trie.degree(np.array([c]))[0] == 0:
                self.brand[b] = self.copy_values[self.copy_trie.value[c]]
            else:
                continue
            self.done[b] = True


def _edges(row, token, path, known, copy) -> tuple[np.ndarray, ...]:
    return row, token, path, known, copy


def _merge(a: tuple, b: tuple, into: str | None) -> tuple[np.ndarray, ...]:
    """Two (row, token, path, known, copy) edge lists, each sorted by key, as one sorted list; with ``into``, an
    edge of ``b`` whose key ``a`` has too only sets its ``into`` child there."""
    ka, kb = a[0] * _KEY + a[1], b[0] * _KEY + b[1]
    pos = np.searchsorted(ka, kb)
    same = np.zeros(len(kb), bool)
    if into is not None and len(ka):
        hit = pos < len(ka)
        same[hit] = ka[pos[hit]] == kb[hit]
        field = {"copy": 4}[into]
        a = tuple(x.copy() if i == field else x for i, x in enumerate(a))
        a[field][pos[same]] = b[field][same]
    keep = ~same
    return tuple(np.insert(x, pos[keep], y[keep]) for x, y in zip(a, b))
