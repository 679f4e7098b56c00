"""The tagger checkpoint in the Hugging Face world: ``from_pretrained`` + ``generate`` with the library's
taxonomy processor chooses what the project's decode loop chooses; the generation config, tokenizer length and
model card are there."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig, T5ForConditionalGeneration

from shelfml.labels import parse_target
from shelfml.tagger import Tagger
from shelfml.tagger.hf import TaxonomyLogitsProcessor


def _generate(ckpt, texts, **kw):
    model = T5ForConditionalGeneration.from_pretrained(ckpt).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, num_beams=1, **kw)
    return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_generate_with_the_processor_equals_the_decode_loop(tiny_checkpoint, small_catalog):
    tagger = Tagger.load(tiny_checkpoint)
    texts = small_catalog.inputs()[:40]
    expected = [p.label for p in tagger.predict(texts)]  # with the fitted label prior, as shipped
    got = _generate(tiny_checkpoint, texts, logits_processor=[TaxonomyLogitsProcessor(tagger, texts)])
    assert [parse_target(t) for t in got] == expected
    for weight in (0.0,):  # and the T5 alone under the constraint
        plain = [p.label for p in tagger.predict(texts, prior_weight=weight)]
        got = _generate(tiny_checkpoint, texts,
                        logits_processor=[TaxonomyLogitsProcessor(tagger, texts, prior_weight=weight)])
        assert [parse_target(t) for t in got] == plain


def test_checkpoint_carries_hub_files(tiny_checkpoint):
    tagger = Tagger.load(tiny_checkpoint)
    assert GenerationConfig.from_pretrained(tiny_checkpoint).max_new_tokens == tagger.max_new_tokens
    assert AutoTokenizer.from_pretrained(tiny_checkpoint).model_max_length == tagger.max_input_tokens
    card = (tiny_checkpoint / "README.md").read_text(encoding="utf-8")
    manifest = json.loads((tiny_checkpoint / "shelfml.json").read_text(encoding="utf-8"))
    assert card.startswith("---\nlibrary_name: transformers\n") and manifest["data"]["fingerprint"] in card
    assert "TaxonomyLogitsProcessor" in card and " > ".join(manifest["label_format"]["levels"]) in card


def test_price_checkpoint_round_trips_through_the_hub_mixin(price_checkpoint, tmp_path):
    from shelfml.price import PriceRegressor
    from shelfml.price.model import PriceModel, eager_runner

    model = PriceModel.from_pretrained(price_checkpoint)
    config = json.loads((price_checkpoint / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "shelfml-price" and not model.training
    model.save_pretrained(tmp_path / "copy")
    again = PriceModel.from_pretrained(tmp_path / "copy")
    regressor = PriceRegressor.load(price_checkpoint)
    texts = ["red item model 1", "blue item model 7", "a title never seen"]
    expected = regressor.predict(texts)
    for m in (model, again):
        assert (regressor.predict(texts, run=eager_runner(m)) == expected).all()
    card = (price_checkpoint / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: shelfml\n") and "PriceModel.from_pretrained" in card
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "config.json").write_text('{"model_type": "t5"}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a shelfml price model"):
        PriceModel.from_pretrained(tmp_path / "tagger")
