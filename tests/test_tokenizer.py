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
