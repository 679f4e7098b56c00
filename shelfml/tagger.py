"""The T5 tagger: named model shapes, loading from a checkpoint, and batched prediction.

Prediction tokenises the inputs, then runs the shared constrained decode loop with a step
function from a *backend*. The eager PyTorch backend lives here; ONNX Runtime and Triton supply
their own ``make_step`` with the same signature.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from shelfml.checkpoint import CheckpointError, read_manifest
from shelfml.decoding import LabelConstraint, Prediction, StepFn, greedy_decode, max_target_length
from shelfml.labels import TargetCodec, Taxonomy

# Named shapes. "small" has the flan-t5-small dimensions (gated-GELU FFN). transformers 5 always ties
# the T5 head to the embeddings; a config built here keeps the original T5 output scaling.
MODEL_SHAPES: dict[str, dict] = {
    "tiny": dict(d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16),
    "mini": dict(d_model=256, d_ff=768, num_layers=3, num_decoder_layers=3, num_heads=4, d_kv=64),
    "small": dict(d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6, d_kv=64),
}
MAX_INPUT_TOKENS = 96

MakeStep = Callable[[np.ndarray, np.ndarray], StepFn]  # (input_ids, attention_mask) -> step


def build_t5(shape: str, tokenizer) -> T5ForConditionalGeneration:
    """A randomly initialised T5 of a named shape, sized to the tokenizer."""
    if shape not in MODEL_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; expected one of {sorted(MODEL_SHAPES)}")
    config = T5Config(
        vocab_size=len(tokenizer),
        feed_forward_proj="gated-gelu",
        dropout_rate=0.1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPES[shape],
    )
    return T5ForConditionalGeneration(config)


def eager_step_factory(model: T5ForConditionalGeneration) -> MakeStep:
    """Eager PyTorch backend: run the encoder once, then one cached decoder step per call."""
    device = next(model.parameters()).device

    def make_step(input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        ids = torch.from_numpy(input_ids).to(device)
        mask = torch.from_numpy(attention_mask).to(device)
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        past = None

        def step(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=torch.from_numpy(tokens).to(device),
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            return out.logits[:, -1].float().cpu().numpy()

        return step

    return make_step


class Tagger:
    """A trained tagger: tokenizer + taxonomy constraint + a backend's step function."""

    def __init__(self, model, tokenizer, taxonomy: Taxonomy, brand_mode: str = "known+copy",
                 max_input_tokens: int = MAX_INPUT_TOKENS, enricher=None) -> None:
        self.model, self.tokenizer, self.taxonomy = model, tokenizer, taxonomy
        self.enricher = enricher  # shelfml.retrieval.Enricher: appends neighbours to each input
        self.max_input_tokens = max_input_tokens
        self.codec = TargetCodec(tokenizer)
        self.constraint = LabelConstraint(self.codec, taxonomy, brand_mode)
        self.max_new_tokens = max_target_length(self.codec, taxonomy)

    @classmethod
    def load(cls, ckpt: Path, brand_mode: str | None = None, device: str = "cpu", weights: bool = True,
             retrieval_index: Path | None = None, embedder=None) -> "Tagger":
        """From a checkpoint; ``weights=False`` loads only tokenizer + taxonomy (e.g. an export's assets,
        for a backend that brings its own graphs). A checkpoint trained with retrieval needs its index:
        ``retrieval_index``, else the path recorded in the manifest; ``embedder`` replaces the default query
        encoder (e.g. the exported ONNX one; the index checks it describes the same weights)."""
        manifest = read_manifest(ckpt, task="tagger", weights=weights)
        enricher = None
        if manifest.get("retrieval"):
            from shelfml.retrieval import checkpoint_enricher

            enricher = checkpoint_enricher(manifest["retrieval"], ckpt, retrieval_index, embedder=embedder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(ckpt)
            model = T5ForConditionalGeneration.from_pretrained(ckpt).to(device).eval() if weights else None
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"{ckpt} is corrupt: {e}") from None
        taxonomy = Taxonomy.from_dict(manifest["taxonomy"])
        decode = manifest.get("decode", {})
        return cls(model, tokenizer, taxonomy, brand_mode or decode.get("brand_mode", "known+copy"),
                   decode.get("max_input_tokens", MAX_INPUT_TOKENS), enricher=enricher)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(list(texts), max_length=self.max_input_tokens, truncation=True, padding=True,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], batch_size: int = 64, make_step: MakeStep | None = None,
                progress: bool = False) -> list[Prediction]:
        """Constrained greedy predictions, in input order, for any backend (eager by default)."""
        if make_step is None:
            assert self.model is not None, "this tagger has no PyTorch weights: pass a backend's make_step"
            make_step = eager_step_factory(self.model)
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
            step = make_step(*self.encode([inputs[i] for i in idx]))
            for i, pred in zip(idx, greedy_decode(step, chunk, self.constraint, self.max_new_tokens)):
                out[i] = pred
        return out  # type: ignore[return-value]

    def timed_predict(self, texts: Sequence[str], batch_size: int = 64, **kw) -> tuple[list[Prediction], float]:
        start = time.perf_counter()
        preds = self.predict(texts, batch_size, **kw)
        return preds, time.perf_counter() - start
