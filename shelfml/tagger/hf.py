"""The tagger in the Hugging Face world: ``generate`` under the taxonomy constraint, and the checkpoint files
Hugging Face tools read (generation config, tokenizer length, model card).

    from transformers import AutoTokenizer, T5ForConditionalGeneration
    from shelfml.tagger import Tagger
    from shelfml.tagger.hf import TaxonomyLogitsProcessor

    model = T5ForConditionalGeneration.from_pretrained(CKPT)
    tokenizer = AutoTokenizer.from_pretrained(CKPT)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    out = model.generate(**batch, logits_processor=[TaxonomyLogitsProcessor(Tagger.load(CKPT), texts)])
    labels = tokenizer.batch_decode(out, skip_special_tokens=True)   # "a > b > c | brand"

greedy ``generate`` with the processor chooses what the project's decode loop chooses (tested).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from shelfml.decoding import edge_scores
from shelfml.labels import BRAND_SEP, LEVEL_SEP
from shelfml.tagger.predict import Tagger


class TaxonomyLogitsProcessor(LogitsProcessor):
    """Every step: tokens outside the taxonomy trie (then the brand tries) get -inf, allowed ones the label
    prior's weighted log mass added, exactly as the decode loop scores them (:func:`shelfml.decoding.edge_scores`)."""

    def __init__(self, tagger: Tagger, texts: Sequence[str], prior_weight: float | None = None) -> None:
        texts = [tagger.tokenizer.clip(t, tagger.max_input_tokens) for t in texts]
        self.constraint, self.state = tagger.constraint, tagger.constraint.start(texts)
        self.prior = tagger.prior_batch(texts, prior_weight)
        use = self.prior is not None and (self.prior.weight or self.prior.brand_weight)
        self.cum = self.state.cumulative(self.prior) if use else None
        self.pad_id, self.started = tagger.constraint.codec.pad_id, False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        state = self.state
        if self.started:  # the token generate chose last step
            rows = np.flatnonzero(~state.done)
            if len(rows):
                edges = state.allowed(rows)
                state.advance(edges, state.find(edges, input_ids[torch.from_numpy(edges.rows), -1].cpu().numpy()))
        self.started = True
        out = torch.full_like(scores, -float("inf"))
        out[torch.from_numpy(state.done), self.pad_id] = 0.0
        rows = np.flatnonzero(~state.done)
        if len(rows):
            edges = state.allowed(rows)
            values = edge_scores(state, edges, scores.float().cpu().numpy(), self.cum, self.prior)
            out[torch.from_numpy(edges.row), torch.from_numpy(edges.token)] = torch.from_numpy(values).to(scores.dtype)
        return out


def hub_files(model, tokenizer, out: Path, manifest: dict, max_input_tokens: int, max_new_tokens: int) -> None:
    """What Hugging Face tools read, written into a checkpoint being saved: ``generation_config.json`` with the
    decode length the taxonomy needs, the tokenizer's ``model_max_length``, and a model card."""
    config = model.generation_config
    config.max_new_tokens = max_new_tokens
    config.decoder_start_token_id = model.config.decoder_start_token_id
    config.eos_token_id, config.pad_token_id = model.config.eos_token_id, model.config.pad_token_id
    config.save_pretrained(out)
    config_file = Path(out) / "tokenizer_config.json"
    data = json.loads(config_file.read_text(encoding="utf-8"))
    data["model_max_length"] = max_input_tokens
    config_file.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    (Path(out) / "README.md").write_text(model_card(manifest), encoding="utf-8")


def model_card(manifest: dict) -> str:
    """A Hugging Face model card: YAML metadata, the label grammar, the validation metrics, how to decode."""
    levels = manifest["label_format"]["levels"]
    val = manifest.get("metrics", {}).get("validation", {})
    metrics = {k: round(val[k], 4) for k in ("item_accuracy", "path_accuracy", "brand_accuracy") if k in val}
    data = manifest["data"]
    yaml = ["---", "library_name: transformers", "pipeline_tag: text2text-generation", "tags:", "- shelfml",
            "- product-categorisation", "- t5", "model-index:", "- name: shelfml-tagger", "  results:",
            "  - task: {type: text2text-generation, name: product category path and brand}",
            f"    dataset: {{name: {json.dumps(data['source'])}, type: catalog, revision: {data['fingerprint']}}}",
            "    metrics:"] + [f"    - {{type: {k}, value: {v}, name: validation {k.replace('_', ' ')}}}"
                              for k, v in metrics.items()] + ["---", ""]
    example = LEVEL_SEP.join(levels) + BRAND_SEP + "brand"
    body = f"""# shelfml tagger

A T5 encoder-decoder trained by `shelfml train tagger` on `{data['source']}` ({data['rows']:,} rows, data
fingerprint `{data['fingerprint']}`). It reads a product title (then the start of its description) and writes
`{example}`: the category path ({len(levels)} levels: {', '.join(levels)}), then the brand ("" when none).

Decode it under the taxonomy stored in `shelfml.json` so every path is a valid one: `shelfml predict` does, and so
does Hugging Face `generate` with the library's processor:

```python
from transformers import AutoTokenizer, T5ForConditionalGeneration
from shelfml.tagger import Tagger
from shelfml.tagger.hf import TaxonomyLogitsProcessor

model, tokenizer = T5ForConditionalGeneration.from_pretrained(CKPT), AutoTokenizer.from_pretrained(CKPT)
batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
out = model.generate(**batch, logits_processor=[TaxonomyLogitsProcessor(Tagger.load(CKPT), texts)])
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```

Plain `generate` (no processor) is not constrained and can write paths outside the taxonomy.

Validation: {', '.join(f'{k} {v}' for k, v in metrics.items()) or 'not recorded'}.
"""
    return "\n".join(yaml) + body
