"""GFLOPs per request, counted by PyTorch's FLOP counter on the eager model.

The T5 count runs the encoder once and the decoder one cached step at a time (as every backend does);
matrix multiplications and attention are counted (2 FLOPs per multiply-add), element-wise ops are not.
The first decoder step also projects the encoder output into every layer's cross-attention keys/values
(cached for the later steps), so it costs more than the others.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def _count(fn) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops() / 1e9, out


@torch.inference_mode()
def t5_gflops(model, input_ids: np.ndarray, attention_mask: np.ndarray, steps: int) -> dict:
    """Encoder once + ``steps`` cached decoder steps on one batch; ``per_request`` divides by the batch."""
    from shelfml.tagger.model import eager_step_factory

    make_step = eager_step_factory(model)
    encoder, step = _count(lambda: make_step(input_ids, attention_mask))
    tokens = np.full((len(input_ids), 1), model.config.decoder_start_token_id, dtype=np.int64)
    per_step = []
    for _ in range(steps):
        flops, logits = _count(lambda: step(tokens))
        per_step.append(flops)
        tokens = logits.argmax(-1)[:, None].astype(np.int64)
    total = encoder + sum(per_step)
    return {"encoder": encoder, "decoder": sum(per_step), "decoder_per_step": per_step, "total": total,
            "per_request": total / len(input_ids), "batch": len(input_ids), "steps": steps}


@torch.inference_mode()
def price_gflops(model, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    """One forward of the price model (text only: the feeds of ``price_batch``) on one batch."""
    from shelfml.benchmarks.backends import price_batch

    feeds = {k: torch.from_numpy(v) for k, v in price_batch(input_ids, attention_mask, model.cfg).items()}
    total, _ = _count(lambda: model(**feeds))
    return {"total": total, "per_request": total / len(input_ids), "batch": len(input_ids)}
