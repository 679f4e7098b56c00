"""A SentencePiece-style unigram tokenizer trained on the corpus, saved as a ``T5TokenizerFast``."""

from __future__ import annotations

from typing import Iterable

from tokenizers import SentencePieceUnigramTokenizer
from transformers import T5TokenizerFast

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # T5 ids: pad 0 (also decoder start), eos 1, unk 2


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 8000) -> T5TokenizerFast:
    """Train a unigram model on ``corpus``; the vocabulary shrinks when the corpus is small."""
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        corpus, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
    )
    return T5TokenizerFast(
        tokenizer_object=sp._tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )
