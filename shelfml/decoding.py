"""One greedy, taxonomy-constrained decode loop shared by every backend.

A backend hands :func:`greedy_decode` a *step* callable: given the next tokens of each row (int64,
``[batch, n]``, the same ``n >= 1`` for every row) it feeds them to the decoder and returns the logits after
the last one (``[batch, vocab]``, numpy), keeping its own cache (encoder outputs, past keys/values) in a
closure. Eager PyTorch, ONNX Runtime and the Triton model differ only in that callable.

Constraint (:mod:`shelfml.constraint`): the taxonomy's path trie, then the brand tries (the known brands, plus in
``known+copy`` mode word spans of the row's own title), compiled to arrays; each step gathers the allowed tokens of
the whole batch, scores, picks and advances them with array operations.

Jump-forward: where the constraint allows exactly one continuation (the rest of a unique name, a separator, the
end of sequence) the token is appended without a decision and fed to the decoder with the tokens before it in one
call. Every call feeds the same number of tokens to each row, so in a batch a row with a longer forced run feeds
the rest in the next calls (its logits in between are not used). The result is token-identical to one call per
token (``jump_forward=False``); only the number of decoder calls changes.

Prior (optional, :mod:`shelfml.prior`): per row, probabilities of the paths and brands; each allowed token gets
``weight * log(mass)`` added to its logit, the mass being the prior probability of every path (brand) under that
child of the trie (a difference of cumulative sums over the trie's depth-first leaf numbering).

Confidence: each prediction carries the probability of its path through every level (the chain rule over the
step probabilities, exact under these constrained scores; a forced token has probability 1) and, when asked, the
best places to leave the greedy path; :func:`complete_branches` decodes those into alternative paths with their
exact probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from shelfml.constraint import MAX_BRAND_TOKENS, ConstraintState, Edges, LabelConstraint
from shelfml.labels import Label, TargetCodec, Taxonomy

StepFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    label: Label
    confidence: float  # probability of the emitted label among valid continuations, step by step
    token_ids: list[int]
    level_probs: tuple[float, ...] = ()  # per taxonomy level: probability of the predicted path through it
    brand_prob: float = 1.0  # probability of the brand given the path
    alternatives: tuple[tuple[tuple[str, ...], float], ...] = ()  # top-k paths with their probabilities
    branches: list[tuple[float, list[int]]] = field(default_factory=list, repr=False)  # (bound, prefix) to complete


def edge_scores(state: ConstraintState, edges: Edges, logits: np.ndarray, cum, prior) -> np.ndarray:
    """The score of every allowed edge: its token's logit (``logits``: ``[batch, vocab]``) plus the label prior's
    weighted log mass (``cum``: :meth:`ConstraintState.cumulative` of ``prior``; None: no prior). The one scoring
    function of the decode loop, the branch completion and the Hugging Face logits processor."""
    scores = logits[edges.row, edges.token]
    if cum is None:
        return scores
    weight = np.where(edges.path != state.dead[0], prior.weight, prior.brand_weight).astype(np.float32)
    return scores + weight * state.log_mass(edges, cum).astype(np.float32)


def _prior_cum(state: ConstraintState, prior):
    return state.cumulative(prior) if prior is not None and (prior.weight or prior.brand_weight) else None


@dataclass
class _Run:
    """One batch in progress: per row the decoder's input sequence (the start token, then every emitted token),
    how much of it is known and fed, and each emitted token's log probability (0 for a forced one)."""

    seq: np.ndarray  # int64 [rows, max_new + 2]: the start token, up to max_new tokens, a spare column
    length: np.ndarray  # tokens of seq known
    fed: np.ndarray  # tokens of seq fed to the decoder
    logp: np.ndarray  # float64 [rows, max_new + 1]
    max_new: int

    @classmethod
    def start(cls, rows: int, max_new: int, start_id: int) -> "_Run":
        seq = np.full((rows, max_new + 2), start_id, np.int64)  # a spare column: a finished row's feed reads it
        return cls(seq, np.ones(rows, np.int64), np.zeros(rows, np.int64), np.zeros((rows, max_new + 1)), max_new)

    def _check(self, rows: np.ndarray, lengths: np.ndarray) -> None:
        if lengths.max() > self.max_new:
            over = rows[lengths > self.max_new].tolist()
            raise RuntimeError(f"rows {over} did not finish in {self.max_new} tokens; raise max_new_tokens")

    def emit(self, state: ConstraintState, edges: Edges, picks: np.ndarray, logp: np.ndarray) -> None:
        rows = edges.rows
        at = self.length[rows]
        self._check(rows, at)
        self.seq[rows, at] = edges.token[picks]
        self.logp[rows, at - 1] = logp
        self.length[rows] = at + 1
        state.advance(edges, picks)

    def append(self, rows: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Forced tokens (``lengths[i]`` of them for ``rows[i]``, row after row): log probability 0."""
        at = self.length[rows]
        self._check(rows, at + lengths - 1)
        owner = rows.repeat(lengths)
        cols = (at - lengths.cumsum() + lengths).repeat(lengths) + np.arange(len(tokens))
        self.seq[owner, cols] = tokens
        self.logp[owner, cols - 1] = 0.0
        self.length[rows] = at + lengths

    def feed(self, finished: np.ndarray, width: int, pad_id: int) -> np.ndarray:
        """The next ``width`` tokens of every row (the start pad for finished rows)."""
        rows = np.arange(len(self.seq))
        if width == 1:
            tokens = self.seq[rows, self.fed][:, None]
        else:
            tokens = self.seq[rows[:, None], np.minimum(self.fed[:, None] + np.arange(width), self.seq.shape[1] - 1)]
        tokens[finished] = pad_id
        return tokens

    def emitted(self, b: int) -> list[int]:
        return self.seq[b, 1 : self.length[b]].tolist()


class _Loop:
    """The decode loop of one batch (greedy, or through given token prefixes until the path is complete)."""

    def __init__(self, step: StepFn, texts: Sequence[str], constraint: LabelConstraint, max_new_tokens: int,
                 prior, branches: int = 0, prefixes: Sequence[Sequence[int]] | None = None,
                 until_path: bool = False, jump_forward: bool = True) -> None:
        self.step, self.constraint, self.prior = step, constraint, prior
        self.state = constraint.start(texts)
        self.cum = _prior_cum(self.state, prior)
        self.run = _Run.start(len(texts), max_new_tokens, constraint.codec.pad_id)  # T5 decoder start = pad
        self.branches, self.prefixes, self.until_path, self.jump = branches, prefixes, until_path, jump_forward
        self.found: list[list[tuple[float, list[int]]]] = [[] for _ in texts]

    def finished(self) -> np.ndarray:
        return self.state.path_done if self.until_path else self.state.done

    def decode(self) -> "_Loop":
        run, pad = self.run, self.constraint.codec.pad_id
        self.force(np.arange(self.state.n))
        while not self.finished().all():
            active = np.flatnonzero(~self.finished())
            width = int((run.length[active] - run.fed[active]).min()) if self.jump else 1
            logits = np.asarray(self.step(run.feed(self.finished(), width, pad)), dtype=np.float32)
            run.fed[active] += width
            deciding = active[run.fed[active] == run.length[active]]
            if len(deciding):
                self.decide(deciding, logits)
                self.force(deciding[~self.finished()[deciding]])
        return self

    def force(self, rows: np.ndarray) -> None:
        """Append every token the constraint forces (exactly one allowed continuation) to ``rows``."""
        moved, lengths, tokens = self.state.forced(rows)
        if len(moved):
            self._check_prefix(moved, lengths, tokens)
            self.run.append(moved, lengths, tokens)

    def decide(self, rows: np.ndarray, logits: np.ndarray) -> None:
        """One scored choice for each of ``rows``: the argmax of the constrained scores (the lowest
        token on a tie), or the row's prefix token while it has one."""
        edges = self.state.allowed(rows)
        scores = edge_scores(self.state, edges, logits, self.cum, self.prior)
        segment = np.repeat(np.arange(len(rows)), edges.counts)
        top = np.maximum.reduceat(scores, edges.starts)
        shifted = scores.astype(np.float64) - top[segment]
        logp = shifted - np.log(np.add.reduceat(np.exp(shifted), edges.starts))[segment]
        picks = np.minimum.reduceat(np.where(scores == top[segment], np.arange(len(scores)), len(scores)),
                                    edges.starts)
        if self.prefixes is not None:
            inside = np.array([self.run.length[b] - 1 < len(self.prefixes[b]) for b in edges.rows.tolist()], bool)
            if inside.any():
                sub = edges.take(np.flatnonzero(inside))
                picks[inside] = self.state.find(sub, [self.prefixes[b][self.run.length[b] - 1] for b in sub.rows])
        if self.branches:
            self._record_branches(edges, logp, picks)
        self.run.emit(self.state, edges, picks, logp[picks])

    def _check_prefix(self, rows: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Forced tokens inside a row's prefix must be the prefix's own."""
        if self.prefixes is None:
            return
        at = 0
        for b, n in zip(rows.tolist(), lengths.tolist()):
            start, prefix = int(self.run.length[b]) - 1, self.prefixes[b]
            for i, token in enumerate(tokens[at : at + n].tolist()):
                if start + i < len(prefix) and prefix[start + i] != token:
                    raise ValueError(f"prefix token {prefix[start + i]} of row {b} is outside the constraint")
            at += n

    def _record_branches(self, edges: Edges, logp: np.ndarray, picks: np.ndarray) -> None:
        """The best places to leave the greedy path: per path-deciding row, its ``branches`` best other tokens, each
        with the log probability of the prefix it starts (an upper bound of its completion's)."""
        for i, b in enumerate(edges.rows.tolist()):
            lo, count = int(edges.starts[i]), int(edges.counts[i])
            if self.state.path_done[b] or count < 2:
                continue
            so_far, emitted = float(self.run.logp[b, : self.run.length[b] - 1].sum()), self.run.emitted(b)
            for j in lo + np.argsort(-logp[lo : lo + count], kind="stable")[: self.branches + 1]:
                if j != picks[i]:
                    self.found[b].append((so_far + float(logp[j]), emitted + [int(edges.token[j])]))


def greedy_decode(
    step: StepFn, texts: Sequence[str], constraint: LabelConstraint, max_new_tokens: int = 64, prior=None,
    branches: int = 0, jump_forward: bool = True,
) -> list[Prediction]:
    """Greedy decoding of one batch under the taxonomy constraint (``prior``: a :class:`shelfml.prior.PriorBatch`
    of these rows, whose log mass is added to the allowed tokens' logits with its weight). Each prediction
    carries the probability of its path through every level (the chain rule: the product of the step
    probabilities up to the separator that closes the level) and, with ``branches`` > 0, the best places to leave
    the greedy path (:func:`complete_branches` turns them into alternative paths). ``jump_forward=False`` feeds
    forced tokens one decoder call each (the same labels)."""
    loop = _Loop(step, texts, constraint, max_new_tokens, prior, branches, jump_forward=jump_forward).decode()
    codec, state, run = constraint.codec, loop.state, loop.run
    depth = len(constraint.taxonomy.levels)
    out = []
    for b in range(state.n):
        label = Label(state.path[b], state.brand[b])
        cumulative = np.cumsum(run.logp[b, : run.length[b] - 1])
        ends = codec.level_ends(label.path)
        levels = [float(np.exp(cumulative[e - 1])) for e in ends]
        levels += levels[-1:] * (depth - len(levels))  # a short path: its deeper levels are the path itself
        path_logp = cumulative[ends[-1] - 1]
        out.append(Prediction(label, float(np.exp(cumulative[-1])), run.emitted(b), tuple(levels),
                              float(np.exp(cumulative[-1] - path_logp)),
                              branches=sorted(loop.found[b], key=lambda o: -o[0])[:branches]))
    return out


def complete_branches(step: StepFn, texts: Sequence[str], prefixes: Sequence[Sequence[int]],
                      constraint: LabelConstraint, max_new_tokens: int = 64, prior=None) -> list[tuple[tuple[str, ...], float]]:
    """Each row forced through its token prefix, then decoded greedily until its path is complete: the path and
    its probability under the same constrained scores as :func:`greedy_decode` (``step`` and ``prior`` are of
    these rows: a row per prefix)."""
    loop = _Loop(step, texts, constraint, max_new_tokens, prior, prefixes=prefixes, until_path=True).decode()
    run = loop.run
    return [(loop.state.path[b], float(np.exp(run.logp[b, : run.length[b] - 1].sum()))) for b in range(loop.state.n)]


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
