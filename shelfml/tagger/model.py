"""The tagger's PyTorch side: named T5 shapes, building and loading the model, and the eager step.

Only training, export and benchmarks import this module; serving runs the exported graphs
(:mod:`shelfml.tagger.runners`) and never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import T5Config, T5ForConditionalGeneration

from shelfml.checkpoint import CheckpointError
from shelfml.decoding import StepFn
from shelfml.tagger.config import MODEL_SHAPES
from shelfml.tagger.predict import MakeStep

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


def load_t5(ckpt: Path, device: str = "cpu") -> T5ForConditionalGeneration:
    """The checkpoint's weights, in eval mode; CheckpointError when they do not load."""
    try:
        return T5ForConditionalGeneration.from_pretrained(ckpt).to(device).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{ckpt} is corrupt: {e}") from None


def eager_step_factory(model: T5ForConditionalGeneration) -> MakeStep:
    """Eager PyTorch backend: run the encoder once, then one cached decoder step per call."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def make_step(input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        ids = torch.from_numpy(input_ids).to(device)
        mask = torch.from_numpy(attention_mask).to(device)
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        past = None

        @torch.inference_mode()
        def step(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            out = model(encoder_outputs=encoder_outputs, attention_mask=mask,
                        decoder_input_ids=torch.from_numpy(tokens).to(device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            return out.logits[:, -1].float().cpu().numpy()

        return step

    return make_step
