"""The fixed workloads, declared once as data, and their inputs.

Inputs are token ids, not text, so that every backend (and every model, trained or random) sees exactly
``input_tokens`` tokens; they are drawn from a seeded generator from ordinary (non-special) token ids.
W4 sends real texts (the trained checkpoint's own test split), since the served model takes text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    id: str
    name: str
    task: str  # "tagger" (fixed 16-token greedy), "price" (one forward), "serve" (Triton end to end)
    batch: int
    input_tokens: int | None = None
    new_tokens: int | None = None
    concurrency: tuple[int, ...] = ()
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


WORKLOADS: dict[str, Workload] = {w.id: w for w in (
    Workload("W1", "tag-b1", "tagger", batch=1, input_tokens=64, new_tokens=16,
             description="64 input tokens, exactly 16 greedy tokens (EOS suppressed), batch 1: latency"),
    Workload("W2", "tag-b32", "tagger", batch=32, input_tokens=64, new_tokens=16,
             description="the same at batch 32: throughput"),
    Workload("W3", "price-b32", "price", batch=32, input_tokens=128,
             description="the price regressor, 128 tokens per row, batch 32"),
    Workload("W4", "serve", "serve", batch=1, concurrency=(1, 4, 16),
             description="tagger requests end to end through Triton gRPC: latency at batch 1 against the same "
                         "constrained in-process ONNX Runtime path, throughput at concurrency 1, 4, 16 "
                         "(dynamic batching)"),
)}
BATCH_SWEEP = (1, 4, 16, 32)  # latency against batch size (tagger, 64 in / 16 out); 1 and 32 are W1 and W2


def token_batch(vocab_size: int, batch: int, length: int, first_id: int, last_id: int | None, seed: int = 0,
                prefix_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[batch, length]`` int64 ids drawn from ``[first_id, vocab_size)``, optionally opened by ``prefix_id``
    (BERT's [CLS]) and closed by ``last_id`` (EOS / [SEP]), with an all-ones mask (no padding)."""
    assert vocab_size > first_id + 1, f"vocabulary of {vocab_size} has no ordinary ids above {first_id}"
    rng = np.random.default_rng(seed)
    ids = rng.integers(first_id, vocab_size, (batch, length), dtype=np.int64)
    if prefix_id is not None:
        ids[:, 0] = prefix_id
    if last_id is not None:
        ids[:, -1] = last_id
    return ids, np.ones_like(ids)
