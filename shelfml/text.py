"""Tokenizers without transformers: a ``save_pretrained`` folder's ``tokenizer.json`` run by the Rust
``tokenizers`` library, giving the ids the transformers wrapper gives (truncation counts the special
tokens the post-processor adds; padding to the longest row, on the right).

Serving, export assets and evaluation read tokenizers through :func:`load_tokenizer`; only training
builds them with transformers (:mod:`shelfml.tokenizer`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL = ("pad", "eos", "unk", "cls", "sep")
MAX_WORD_CHARS = 1000  # a longer "word" (no product has one) is cut: its tokens would depend on all of it
MAX_SCANNED_WORDS = 4096  # words looked at for the first max_tokens visible ones
_WORD = re.compile(r"\S+")
# Control characters (NUL included) and zero-width/format characters: no text a model should read.
INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


class TokenizerError(ValueError):
    """A folder without a usable tokenizer."""


def _token(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class TextTokenizer:
    """Batch encoding to padded int64 id/mask arrays, and plain id lists for label fields."""

    def __init__(self, backend: Tokenizer, special: dict[str, str | None]) -> None:
        self.backend_tokenizer = backend
        self.pad_token, self.eos_token, self.unk_token = special.get("pad"), special.get("eos"), special.get("unk")
        self.pad_token_id = self._id(self.pad_token)
        self.eos_token_id = self._id(self.eos_token)
        self.unk_token_id = self._id(self.unk_token)
        self.cls_token_id, self.sep_token_id = self._id(special.get("cls")), self._id(special.get("sep"))

    @classmethod
    def from_transformers(cls, tokenizer) -> "TextTokenizer":
        """An independent copy of a transformers fast tokenizer's backend (training builds those)."""
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        return cls(backend, {k: getattr(tokenizer, f"{k}_token", None) for k in SPECIAL})

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size without added tokens (as transformers counts it)."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One text's ids, untruncated."""
        backend = self.backend_tokenizer
        backend.no_truncation()
        backend.no_padding()
        return backend.encode(text, add_special_tokens=add_special_tokens).ids

    @staticmethod
    def clip(text: str, max_tokens: int) -> str:
        """The text as the models read it, with bounded work: whitespace runs as one space (as the training
        data is written), control and zero-width characters dropped, words cut at :data:`MAX_WORD_CHARS`, and
        only as many words as can give ``max_tokens`` tokens (at most :data:`MAX_SCANNED_WORDS` looked at).
        Every word left gives at least one token (the pre-tokenizers split at whitespace), so truncation to
        ``max_tokens`` keeps the ids it keeps on the whole text, and a 1 MiB input costs what a normal one does."""
        words = []
        for scanned, match in enumerate(_WORD.finditer(text)):
            word = INVISIBLE.sub("", match.group()[:MAX_WORD_CHARS])
            if word:
                words.append(word)
            if len(words) > max_tokens or scanned >= MAX_SCANNED_WORDS:
                break
        return " ".join(words)

    def batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 [rows, longest], truncated to ``max_length`` tokens (each text
        clipped first: :meth:`clip`)."""
        texts = [self.clip(t, max_length) for t in texts]
        backend = self.backend_tokenizer
        backend.enable_truncation(max_length)
        backend.enable_padding(pad_id=self.pad_token_id or 0, pad_token=self.pad_token or "[PAD]")
        encodings = backend.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        return ids, mask


def load_tokenizer(folder: str | Path) -> TextTokenizer:
    """The tokenizer saved in ``folder`` (``tokenizer.json`` + ``tokenizer_config.json``)."""
    folder = Path(folder)
    for name in (TOKENIZER_FILE, CONFIG_FILE):  # the vocabulary, and which tokens are pad/eos/unk
        if not (folder / name).is_file():
            raise TokenizerError(f"{folder} has no {name}: the tokenizer is incomplete (a deleted or uncopied "
                                 "file; it is written by a fast tokenizer's save_pretrained)")
    path = folder / TOKENIZER_FILE
    try:
        backend = Tokenizer.from_file(str(path))
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception on a corrupt file
        raise TokenizerError(f"{path.parent} holds a corrupt tokenizer: {str(e).splitlines()[0][:300]}") from None
    special = {k: _token(config.get(f"{k}_token")) for k in SPECIAL}
    return TextTokenizer(backend, special)
