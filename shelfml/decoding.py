"""One greedy, taxonomy-constrained decode loop shared by every backend.

A backend hands :func:`greedy_decode` a *step* callable: given the last token of each row
(int64, shape ``[batch, 1]``) it returns next-token logits (``[batch, vocab]``, numpy) and keeps
its own cache (encoder outputs, past keys/values) in a closure. Eager PyTorch, ONNX Runtime and
the Triton model differ only in that callable.

Constraint: a prefix trie over the token ids of every valid category path (shared by all rows),
followed by a brand trie: the known brands, plus (``brand_mode="known+copy"``) word spans of the
row's own title, so an unseen brand written in the title can still be produced.
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

    def insert(self, ids: Sequence[int], value: object) -> bool:
        """Insert a sequence; returns False when another value already owns it."""
        node = self
        for i in ids:
            node = node.children.setdefault(int(i), TrieNode())
        if node.value is not None and node.value != value:
            return False
        node.value = value
        return True


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
    def __init__(self, constraint: LabelConstraint, nodes: list[TrieNode], copy_root: TrieNode | None) -> None:
        self.c, self.nodes, self.copy_root = constraint, nodes, copy_root
        self.path: tuple[str, ...] | None = None
        self.brand: str | None = None

    @property
    def done(self) -> bool:
        return self.brand is not None

    def allowed(self) -> np.ndarray:
        ids = set()
        for node in self.nodes:
            ids.update(node.children)
        return np.fromiter(ids, dtype=np.int64, count=len(ids))

    def advance(self, token: int) -> None:
        self.nodes = [n.children[token] for n in self.nodes if token in n.children]
        assert self.nodes, f"token {token} is outside the constraint"
        if self.path is None:
            node = self.nodes[0]
            if not node.children:  # the path and its brand separator are complete
                self.path = node.value
                self.nodes = [self.c.brand_root] + ([self.copy_root] if self.copy_root else [])
        else:
            ended = [n.value for n in self.nodes if not n.children]
            if ended:  # end-of-sequence emitted: brand complete
                self.brand = ended[0]


@dataclass
class Prediction:
    label: Label
    confidence: float  # probability of the emitted label among valid continuations, step by step
    token_ids: list[int]


def greedy_decode(
    step: StepFn, texts: Sequence[str], constraint: LabelConstraint, max_new_tokens: int = 64
) -> list[Prediction]:
    """Greedy decoding of one batch under the taxonomy constraint."""
    codec = constraint.codec
    rows = constraint.start(texts)
    tokens = np.full((len(rows), 1), codec.pad_id, dtype=np.int64)  # T5 decoder start = pad
    logprob = np.zeros(len(rows))
    emitted: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        if all(r.done for r in rows):
            break
        logits = np.asarray(step(tokens), dtype=np.float32)
        for b, row in enumerate(rows):
            if row.done:
                tokens[b, 0] = codec.pad_id
                continue
            allowed = row.allowed()
            scores = logits[b, allowed]
            best = int(np.argmax(scores))
            token = int(allowed[best])
            logprob[b] -= np.log(np.exp(scores - scores[best]).sum())  # log-softmax over allowed tokens
            row.advance(token)
            emitted[b].append(token)
            tokens[b, 0] = token
    unfinished = [b for b, r in enumerate(rows) if not r.done]
    assert not unfinished, f"rows {unfinished} did not finish in {max_new_tokens} tokens; raise max_new_tokens"
    return [
        Prediction(Label(r.path, r.brand), float(np.exp(lp)), ids) for r, lp, ids in zip(rows, logprob, emitted)
    ]


def max_target_length(codec: TargetCodec, taxonomy: Taxonomy) -> int:
    """Longest target a constrained decode can need (path + separator + brand + eos)."""
    longest_path = max(len(codec.path_ids(p)) for p in taxonomy.paths)
    longest_brand = max([len(codec.brand_ids(b)) for b in taxonomy.brands] + [MAX_BRAND_TOKENS])
    return longest_path + longest_brand
