import pytest

from shelfml.labels import Label, TargetCodec, Taxonomy, clean_value, format_target, parse_target


@pytest.mark.parametrize(
    "label",
    [
        Label(("Clothing", "Women's Clothing", "Lingerie, Sleep & Swimwear"), "Alisha"),
        Label(("a", "b"), ""),
        Label(("home", "kitchen", "cookware", "pans"), "Green Harbor & Co"),
    ],
    ids=["flipkart-3-level", "2-level-no-brand", "4-level-multiword-brand"],
)
def test_format_parse_round_trip(label):
    assert parse_target(format_target(label)) == label


def test_format_is_human_readable():
    assert format_target(Label(("a", "b", "c"), "x")) == "a > b > c | x"


@pytest.mark.parametrize("text", ["a > b > c", "a | x", " > b | x", "a > b > c > d > e | x"],
                         ids=["no-brand-sep", "one-level", "empty-level", "five-levels"])
def test_parse_rejects_non_labels(text):
    with pytest.raises(ValueError, match="not a label"):
        parse_target(text)


def test_clean_value_removes_separators_and_whitespace():
    assert clean_value("  Tops  >  Tees ") == "Tops / Tees"
    assert clean_value("A|B") == "A / B"
    assert clean_value("Lingerie,  Sleep\n& Swimwear") == "Lingerie, Sleep & Swimwear"


def test_taxonomy_dict_round_trip_and_membership():
    tax = Taxonomy(["l1", "l2"], [("a", "b"), ("a", "c"), ("a", "b")], ["x", "", "y"])
    assert tax.paths == [("a", "b"), ("a", "c")] and tax.brands == ["x", "y"]
    assert ("a", "c") in tax and ("a", "d") not in tax
    assert Taxonomy.from_dict(tax.to_dict()).to_dict() == tax.to_dict()


def test_taxonomy_rejects_wrong_depth():
    with pytest.raises(AssertionError, match="2-2 non-empty levels"):
        Taxonomy(["l1", "l2"], [("a", "b", "c")], [])
    with pytest.raises(AssertionError, match="2-3 non-empty levels"):
        Taxonomy(["l1", "l2", "l3"], [("a",)], [])
    assert ("a", "b") in Taxonomy(["l1", "l2", "l3"], [("a", "b"), ("a", "b", "c")], [])  # a short path


def test_codec_ids_are_field_by_field(tokenizer):
    codec = TargetCodec(tokenizer)
    label = Label(("grocery", "snacks", "chips"), "Crunchy")
    ids = codec.encode(label)
    assert ids[-1] == tokenizer.eos_token_id
    assert ids[: len(codec.path_ids(label.path))] == codec.path_ids(label.path)
    assert codec.path_ids(label.path)[-len(codec.brand_sep):] == codec.brand_sep
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == format_target(label).replace(" ", "")


def test_brand_ids_many_equals_one_by_one_after_padded_calls(tokenizer):
    """The batched brand tokenisation calls the Rust tokenizer directly: the padding and truncation a
    previous wrapper call left on it must not leak into the ids."""
    codec = TargetCodec(tokenizer)
    brands = ["Crunchy", "Green Harbor", "x", "Stainless Steel Water Bottle Co", "Ploomz Women's T-Shirt Bra"]
    one_by_one = [codec.brand_ids(b) for b in brands]
    tokenizer(["a much longer text than any brand here, to pad to", "b"], padding=True, truncation=True, max_length=4)
    assert codec.brand_ids_many(brands) == one_by_one
    assert tokenizer(brands, add_special_tokens=False)["input_ids"] == [ids[:-1] for ids in one_by_one]
