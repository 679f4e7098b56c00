"""What ``shelfml bench`` runs for each model family (``Family.bench`` names one of these).

A :class:`BenchProfile` holds a family's workloads, its reference backend, how outputs are compared and
how inputs and GFLOPs are made, and its own extra sections (the tagger's encoder/decoder split and its
constrained end-to-end decoding). The bench itself (``run.bench_model``) is the same for every family.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from shelfml.benchmarks import agreement
from shelfml.benchmarks.backends import Backend, ModelUnderTest
from shelfml.benchmarks.flops import price_gflops, t5_gflops
from shelfml.benchmarks.timing import interleaved, summarize
from shelfml.benchmarks.workloads import BATCH_SWEEP, WORKLOADS, token_batch

Section = Callable[[ModelUnderTest, list[Backend], object, int, "list[str] | None"], "dict | None"]


@dataclass(frozen=True)
class BenchProfile:
    plan: Callable[[object], list[tuple[str, int, int]]]  # Repetitions -> [(workload id, batch, repetitions)]
    input_tokens: int
    new_tokens: int
    reference: str  # the backend every other one is compared with
    compare: Callable[[np.ndarray, np.ndarray], dict]  # -> a comparison with an "agrees" entry
    inputs: Callable[[ModelUnderTest, int, int, int], tuple[np.ndarray, np.ndarray]]  # (m, batch, length, seed)
    gflops: Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], dict]
    describe: Callable[[ModelUnderTest], dict] = lambda m: {}
    sections: dict[str, Section] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Tagger: the fixed 16-token greedy workloads W1 (batch 1) and W2 (batch 32), a batch sweep


def _tagger_plan(reps) -> list[tuple[str, int, int]]:
    plan = [("W1", WORKLOADS["W1"].batch, reps.w1), ("W2", WORKLOADS["W2"].batch, reps.w2)]
    if reps.sweep:
        plan += [(f"sweep-b{b}", b, reps.sweep) for b in BATCH_SWEEP if b not in (1, 32)]
    return plan


def _tagger_inputs(m: ModelUnderTest, batch: int, length: int, seed: int):
    return token_batch(m.vocab_size, batch, length, m.special["first_id"], m.special["eos"], seed)


def _t5_config(m: ModelUnderTest) -> dict:
    keys = ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "vocab_size")
    return {"config": {k: getattr(m.torch_model.config, k) for k in keys}}


def _profile(m: ModelUnderTest, timed: list[Backend], reps, seed: int, texts) -> dict:
    """W1 split: the encoder (make_step) and each decoder step, for the backends built on a step function."""
    w = WORKLOADS["W1"]
    ids, mask = _tagger_inputs(m, w.batch, w.input_tokens, seed)
    out = {}
    for b in timed:
        if b.make_step is None:
            continue
        enc, steps = [], []
        for _ in range(reps.profile):
            with torch.inference_mode():
                t0 = time.perf_counter()
                step = b.make_step(ids, mask)
                enc.append(time.perf_counter() - t0)
                tokens = np.full((len(ids), 1), m.special["start"], dtype=np.int64)
                for _ in range(w.new_tokens):
                    t0 = time.perf_counter()
                    logits = step(tokens)
                    steps.append(time.perf_counter() - t0)
                    tokens = np.asarray(logits).argmax(-1)[:, None].astype(np.int64)
        out[b.name] = {"encoder_ms": float(np.median(enc) * 1e3), "decoder_step_ms": float(np.median(steps) * 1e3),
                       "decoder_total_ms": float(np.median(steps) * 1e3 * w.new_tokens), "steps": w.new_tokens}
    return {"W1": out}


def _constrained(m: ModelUnderTest, timed: list[Backend], reps, seed: int, texts) -> dict | None:
    """The end-to-end constrained tagger (real texts, taxonomy trie) for eager and ONNX Runtime FP32/INT8;
    None for a model without a checkpoint (random weights) or without texts."""
    if "tagger" not in m.info or not texts:
        return None
    tagger = m.info["tagger"]
    steps = {b.name: b.make_step for b in m.backends if b.make_step is not None and b.device == "cpu"}
    labels = {n: [p.label for p in tagger.predict(texts[:32], 32, make_step=s)] for n, s in steps.items()}
    ref = labels["eager-loop"]
    agree = {n: {"label_agreement": float(np.mean([a == b for a, b in zip(ref, lab)])),
                 "required": n in ("eager-loop", "onnx-fp32")} for n, lab in labels.items()}
    if agree.get("onnx-fp32", {}).get("label_agreement", 1.0) < 1.0:
        raise agreement.AgreementError(f"constrained tagger: onnx-fp32 labels differ from eager on "
                                       f"{agree['onnx-fp32']['label_agreement']:.0%} agreement")
    out = {"texts": texts[:32][:2], "agreement": agree, "by_batch": {}}
    for batch, n in ((1, reps.constrained), (32, max(2, reps.constrained // 3))):
        chunk = texts[:batch]
        samples = interleaved({name: (lambda s=s: tagger.predict(chunk, batch, make_step=s)) for name, s in steps.items()},
                              reps=n, warmup=reps.warmup)
        stats = {name: summarize(s, batch) for name, s in samples.items()}
        for s in stats.values():
            s["speedup_vs_eager"] = stats["eager-loop"]["p50_ms"] / s["p50_ms"]
        out["by_batch"][str(batch)] = stats
        out.setdefault("overhead", {})[str(batch)] = {name: constraint_overhead(tagger, s, texts[:32], batch, n)
                                                      for name, s in steps.items()}
    return out


def constraint_overhead(tagger, make_step, texts: list[str], batch: int, reps: int) -> dict:
    """Where the constrained decode's time goes (best of ``reps``): the tokenizer (clipping and encoding the
    inputs), the encoder (``make_step``), the decoder calls, the label prior (its classifiers' scores of each text)
    and the rest, which is the constraint (its state, scores, picks, forced runs, the copy trie) and the loop;
    decoder calls per batch with jump-forward and with one call per token (the labels must not differ)."""
    def run(jump: bool) -> dict:
        clock = {"tokenizer": 0.0, "encoder": 0.0, "steps": 0.0, "prior": 0.0, "calls": 0}

        def timed(key: str, fn):
            def call(*args, **kw):
                t0 = time.perf_counter()
                out = fn(*args, **kw)
                clock[key] += time.perf_counter() - t0
                return out
            return call

        def timed_make_step(ids, mask):
            step = timed("encoder", make_step)(ids, mask)

            def timed_step(tokens):
                clock["calls"] += 1
                return timed("steps", step)(tokens)
            return timed_step

        hooks = {(tagger, "prior_batch"): "prior", (tagger, "encode"): "tokenizer",
                 (tagger.tokenizer, "clip"): "tokenizer"}
        for (owner, name), key in hooks.items():  # these instances only, for the measurement
            setattr(owner, name, timed(key, getattr(owner, name)))
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                preds = tagger.predict(texts, batch, make_step=timed_make_step, jump_forward=jump)
            total = time.perf_counter() - t0
        finally:
            for owner, name in hooks:
                delattr(owner, name)
        return {**clock, "total": total, "labels": [p.label for p in preds],
                "tokens": sum(len(p.token_ids) for p in preds)}

    best = min((run(True) for _ in range(max(reps, 1))), key=lambda r: r["total"])
    stepwise = run(False)
    if stepwise["labels"] != best["labels"]:
        raise agreement.AgreementError("constrained tagger: jump-forward changed the labels")
    batches = -(-len(texts) // batch)
    rest = best["total"] - best["tokenizer"] - best["encoder"] - best["steps"] - best["prior"]
    per = lambda seconds: 1e3 * seconds / batches  # noqa: E731
    return {"decode_ms": per(best["total"]), "tokenizer_ms": per(best["tokenizer"]), "encoder_ms": per(best["encoder"]),
            "decoder_ms": per(best["steps"]), "prior_ms": per(best["prior"]), "constraint_ms": per(rest),
            "constraint_share": rest / best["total"], "constraint_us_per_call": 1e6 * rest / max(best["calls"], 1),
            "step_us": 1e6 * best["steps"] / max(best["calls"], 1),
            "calls_per_batch": best["calls"] / batches, "calls_per_batch_one_per_token": stepwise["calls"] / batches,
            "tokens_per_label": best["tokens"] / len(texts)}


TAGGER_BENCH = BenchProfile(
    plan=_tagger_plan, input_tokens=WORKLOADS["W1"].input_tokens, new_tokens=WORKLOADS["W1"].new_tokens,
    reference="eager-loop", compare=agreement.compare_tokens, inputs=_tagger_inputs, gflops=t5_gflops,
    describe=_t5_config, sections={"profile": _profile, "constrained": _constrained})


# ---------------------------------------------------------------------------------------------
# Price: one forward of batch 32 (W3)


def _price_inputs(m: ModelUnderTest, batch: int, length: int, seed: int):
    length = min(length, m.special["max_positions"])
    return token_batch(m.vocab_size, batch, length, m.special["first_id"], m.special["sep"], seed,
                       prefix_id=m.special["cls"])


PRICE_BENCH = BenchProfile(
    plan=lambda reps: [("W3", WORKLOADS["W3"].batch, reps.w3)], input_tokens=WORKLOADS["W3"].input_tokens,
    new_tokens=0, reference="eager", compare=agreement.compare_prices, inputs=_price_inputs,
    gflops=lambda model, ids, mask, steps: price_gflops(model, ids, mask))
