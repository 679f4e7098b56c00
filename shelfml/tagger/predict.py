"""The tagger at prediction time: tokenizer + taxonomy constraint + a backend's step function.

Prediction tokenises the inputs, then runs the shared constrained decode loop with a step function
from a *backend*: eager PyTorch (:func:`shelfml.tagger.model.eager_step_factory`), ONNX Runtime or
Triton BLS (:mod:`shelfml.tagger.runners`). This module needs no torch: PyTorch weights are loaded
only when asked for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfml.checkpoint import read_manifest
from shelfml.constraint import LabelConstraint
from shelfml.decoding import Prediction, StepFn, complete_branches, greedy_decode, max_target_length, top_paths
from shelfml.labels import TargetCodec, Taxonomy
from shelfml.text import TextTokenizer, load_tokenizer

MAX_INPUT_TOKENS = 96
TOP_K = 3  # paths a prediction record and the served model return per product
MAX_TOP_K = 16

MakeStep = Callable[[np.ndarray, np.ndarray], StepFn]  # (input_ids, attention_mask) -> step


class Tagger:
    """A trained tagger: tokenizer + taxonomy constraint + a backend's step function."""

    def __init__(self, model, tokenizer, taxonomy: Taxonomy, brand_mode: str = "known+copy",
                 max_input_tokens: int = MAX_INPUT_TOKENS, enricher=None, prior=None, calibration=None) -> None:
        """``tokenizer``: a :class:`TextTokenizer` or a transformers fast tokenizer (copied into one);
        ``prior``: a :class:`shelfml.prior.LabelPrior` the decode loop adds to the logits; ``calibration``: a
        :class:`shelfml.confidence.LevelCalibration` of the per-level probabilities."""
        if not isinstance(tokenizer, TextTokenizer):
            tokenizer = TextTokenizer.from_transformers(tokenizer)
        self.model, self.tokenizer, self.taxonomy = model, tokenizer, taxonomy
        self.enricher = enricher  # shelfml.retrieval.Enricher: appends neighbours to each input
        self.prior, self.calibration = prior, calibration
        self.max_input_tokens = max_input_tokens
        self.codec = TargetCodec(tokenizer)
        self.constraint = LabelConstraint(self.codec, taxonomy, brand_mode)
        self.max_new_tokens = max_target_length(self.codec, taxonomy)

    @classmethod
    def load(cls, ckpt: Path, brand_mode: str | None = None, device: str = "cpu", weights: bool = True,
             retrieval_index: Path | None = None, embedder=None) -> "Tagger":
        """From a checkpoint; ``weights=False`` loads only tokenizer + taxonomy (e.g. an export's assets,
        for a backend that brings its own graphs). A checkpoint trained with retrieval needs its index:
        ``retrieval_index``, else the one stored in the checkpoint; ``embedder`` replaces the default query
        encoder (e.g. the exported ONNX one; the index checks it describes the same weights)."""
        manifest = read_manifest(ckpt, task="tagger", weights=weights)
        enricher = None
        if manifest.get("retrieval"):
            from shelfml.retrieval import checkpoint_enricher

            enricher = checkpoint_enricher(manifest["retrieval"], ckpt, retrieval_index, embedder=embedder)
        model = None
        if weights:
            from shelfml.tagger.model import load_t5

            model = load_t5(Path(ckpt), device)
        taxonomy = Taxonomy.from_dict(manifest["taxonomy"])
        prior = None
        if manifest.get("prior"):
            from shelfml.prior import LabelPrior

            prior = LabelPrior.load(Path(ckpt), manifest["prior"], taxonomy)
        calibration = None
        if manifest.get("calibration"):
            from shelfml.confidence import LevelCalibration

            calibration = LevelCalibration.from_dict(manifest["calibration"], taxonomy.levels)
        decode = manifest.get("decode", {})
        return cls(model, load_tokenizer(ckpt), taxonomy, brand_mode or decode.get("brand_mode", "known+copy"),
                   decode.get("max_input_tokens", MAX_INPUT_TOKENS), enricher=enricher, prior=prior,
                   calibration=calibration)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.batch(texts, self.max_input_tokens)

    def predict(self, texts: Sequence[str], batch_size: int = 64, make_step: MakeStep | None = None,
                progress: bool = False, prior_weight: float | None = None, top_k: int = 1,
                jump_forward: bool = True) -> list[Prediction]:
        """Constrained greedy predictions, in input order, for any backend (eager by default). The label
        prior, when the model has one, is applied with its fitted weight (``prior_weight`` overrides it; 0: off).
        ``top_k`` > 1: each prediction also carries up to that many paths with their probabilities (the best
        places to leave the greedy path, each completed greedily: one more decode of ``top_k - 1`` rows per text).
        ``jump_forward=False``: one decoder call per token (the same labels; the bench's comparison)."""
        if make_step is None:
            assert self.model is not None, "this tagger has no PyTorch weights: pass a backend's make_step"
            from shelfml.tagger.model import eager_step_factory

            make_step = eager_step_factory(self.model)
        texts = [self.tokenizer.clip(t, self.max_input_tokens) for t in texts]  # bounded work from here on
        inputs = self.enricher.enrich(texts) if self.enricher else texts  # copy spans stay the product's own
        order = np.argsort([len(t) for t in inputs], kind="stable")  # similar lengths share a batch
        out: list[Prediction | None] = [None] * len(texts)
        batches = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="predict", unit="batch", leave=False)
        for start in batches:
            idx = order[start : start + batch_size]
            chunk = [texts[i] for i in idx]
            encoded = self.encode([inputs[i] for i in idx])
            prior = self.prior_batch(chunk, prior_weight)
            preds = greedy_decode(make_step(*encoded), chunk, self.constraint, self.max_new_tokens, prior,
                                  branches=max(top_k - 1, 0), jump_forward=jump_forward)
            self._alternatives(preds, chunk, encoded, prior, make_step, batch_size, top_k)
            for i, pred in zip(idx, preds):
                out[i] = pred
        return out  # type: ignore[return-value]

    def _alternatives(self, preds: list[Prediction], texts: list[str], encoded: tuple[np.ndarray, np.ndarray],
                      prior, make_step: MakeStep, batch_size: int, top_k: int) -> None:
        """Complete every prediction's branches (in batches of ``batch_size`` rows; none at ``top_k`` 1) and set its
        top-k paths (at 1: the prediction's own)."""
        jobs = [(r, prefix) for r, p in enumerate(preds) for _, prefix in p.branches]
        done: list[list] = [[] for _ in preds]
        for start in range(0, len(jobs), batch_size):
            part = jobs[start : start + batch_size]
            rows = np.array([r for r, _ in part])
            sub_prior = None if prior is None else prior.take(rows)
            step = make_step(encoded[0][rows], encoded[1][rows])
            completed = complete_branches(step, [texts[r] for r in rows], [p for _, p in part], self.constraint,
                                          self.max_new_tokens, sub_prior)
            for r, c in zip(rows, completed):
                done[r].append(c)
        for pred, completed in zip(preds, done):
            pred.alternatives = top_paths(pred, completed, top_k)

    def prior_batch(self, texts: Sequence[str], weight: float | None = None):
        """The label prior of ``texts`` (the products' own texts), or None without a prior or at weight 0;
        ``weight`` overrides both fitted weights (path and brand)."""
        if self.prior is None or weight == 0:
            return None
        batch = self.prior.batch(texts)
        if weight is not None:
            batch.weight = batch.brand_weight = weight
        return batch

    def timed_predict(self, texts: Sequence[str], batch_size: int = 64, **kw) -> tuple[list[Prediction], float]:
        start = time.perf_counter()
        preds = self.predict(texts, batch_size, **kw)
        return preds, time.perf_counter() - start


def check_top_k(top_k: int) -> int:
    """A top-k as given by a person (ValueError naming the problem)."""
    if not 1 <= int(top_k) <= MAX_TOP_K:
        raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
    return int(top_k)


def predict_records(ckpt: Path, texts: Sequence[str], batch_size: int = 64, retrieval_index: Path | None = None,
                    brand_mode: str | None = None, prior_weight: float | None = None,
                    prior_only: bool = False, top_k: int | None = None) -> list[dict]:
    """``shelfml predict``: one JSON-ready record per text (label, each level, brand, confidence, the calibrated
    per-level probabilities, back-off path, abstention and the top-k paths)."""
    from shelfml.confidence import decide
    from shelfml.labels import format_path, format_target

    tagger = Tagger.load(Path(ckpt), brand_mode=brand_mode, retrieval_index=retrieval_index)
    preds = tagger.predict(texts, batch_size=batch_size, prior_weight=prior_weight,
                           top_k=TOP_K if top_k is None else check_top_k(top_k),
                           make_step=prior_only_step_factory(len(tagger.tokenizer)) if prior_only else None)
    levels = tagger.taxonomy.levels  # a short path leaves its last levels ""
    decision = decide(preds, levels, tagger.calibration)
    return [{"text": text, "label": format_target(pred.label),
             **{name: pred.label.path[i] if i < len(pred.label.path) else "" for i, name in enumerate(levels)},
             "brand": pred.label.brand, "confidence": float(f"{pred.confidence:.6g}"),
             "level_probability": {name: float(f"{p:.6g}") for name, p in zip(levels, probs)},
             "backoff_path": format_path(pred.label.path[:depth]), "abstain": bool(abstain),
             "alternatives": [{"path": format_path(path), "probability": float(f"{prob:.6g}")}
                              for path, prob in pred.alternatives]}
            for text, pred, probs, depth, abstain in zip(texts, preds, decision.probabilities, decision.backoff_depth,
                                                         decision.abstain)]


def prior_only_step_factory(vocab_size: int) -> MakeStep:
    """A backend whose logits are all zero: decoding then follows the label prior alone (the ablation that
    shows what the T5 adds to it)."""
    def make_step(input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        return lambda tokens: np.zeros((len(tokens), vocab_size), dtype=np.float32)

    return make_step

