import pytest

from transformers import AutoTokenizer


def test_tokenizer_round_trips_text(tokenizer, small_catalog):
    for text in small_catalog.inputs()[:50]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_saves_as_t5_and_reloads_with_auto(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert "T5Tokenizer" in type(loaded).__name__
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    text = "Green Harbor shampoo 500 ml, Pack of 2"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def _long_texts(catalog, seed: int = 0) -> list[str]:
    """Long inputs of every shape: many products run together, whitespace runs, newlines, one giant word."""
    import random

    rng = random.Random(seed)
    words = " ".join(catalog.inputs()[:200]).split()
    texts = [" ".join(rng.choice(words) for _ in range(n)) for n in (50, 97, 150, 400, 5000)]
    texts += ["caf\u00e9\u200b mug\x00 \ufeffsteel", "a" + " " * 20_000 + " ".join(words[:300]), "\n".join(words[:500]), "x" * 3000 + " shampoo",
              words[0] + "  \t " * 800 + "bottle", "y" * 1500 + " " + " ".join(words[:200])]
    return texts


@pytest.mark.parametrize("max_tokens", [8, 64, 96, 128])
def test_clipping_keeps_exactly_the_tokens_truncation_keeps(tokenizer, small_catalog, max_tokens):
    """Bounded work must not change a single id: the clipped text reads as the whole text does, for the
    tagger's sentencepiece tokenizer and the price encoder's WordPiece one."""
    from shelfml.encoders import default_encoder
    from shelfml.text import INVISIBLE, MAX_WORD_CHARS, TextTokenizer, load_tokenizer

    for tok in (TextTokenizer.from_transformers(tokenizer), load_tokenizer(default_encoder())):
        for text in _long_texts(small_catalog) + small_catalog.inputs()[:20]:
            clipped = tok.clip(text, max_tokens)
            backend = tok.backend_tokenizer
            backend.no_padding()
            backend.enable_truncation(max_tokens)
            whole = " ".join(w for w in (INVISIBLE.sub("", w[:MAX_WORD_CHARS]) for w in text.split()) if w)
            assert backend.encode(clipped).ids == backend.encode(whole).ids, text[:60]
        for worst in ("x" * (1 << 20), "a" + " " * (1 << 20) + "b", "\u200b " * (1 << 18) + "shampoo"):
            assert len(tok.clip(worst, max_tokens)) <= (max_tokens + 1) * (MAX_WORD_CHARS + 1)  # bounded
        assert tok.clip("\u200b " * 3000 + "steel\u200b bottle\x00", max_tokens).endswith("steel bottle")
