"""Query/corpus encoders of the retrieval index and their I/O contract.

:class:`Embedder` is the sentence-transformers all-MiniLM-L6-v2 (training, index building, eager
evaluation); :class:`OrtEmbedder` runs the exported ``embedder.onnx`` (in-process or over BLS) with
the Rust tokenizer, for serving. Both ``describe()`` the weights they embed with; an index checks it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfml.checkpoint import sha256_file
from shelfml.contract import BATCH, GraphSpec, TensorSpec
from shelfml.encoders import DEFAULT_ENCODER_NAME, default_encoder
from shelfml.retrieval.errors import RetrievalError

EMBEDDER_SEQ = "embedder_sequence"


def embedder_spec(dimension: int) -> GraphSpec:
    """text ids + mask -> L2-normalised sentence embedding."""
    return GraphSpec(name="embedder", file="embedder.onnx", atol=1e-4, keep_fp32=(r"LayerNorm", r"Softmax"),
                     inputs=(TensorSpec("input_ids", "int64", (BATCH, EMBEDDER_SEQ)),
                             TensorSpec("attention_mask", "int64", (BATCH, EMBEDDER_SEQ))),
                     outputs=(TensorSpec("embedding", "float32", (BATCH, dimension)),))


class Embedder:
    """A sentence-transformers encoder (all-MiniLM-L6-v2 by default), L2-normalised float32 output."""

    def __init__(self, path: str | None = None, max_length: int = 64, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        default = default_encoder()
        self.path = str(path or default)
        if not Path(self.path).is_dir():
            raise RetrievalError(f"encoder {self.path!r} is not a local directory (nothing is downloaded)")
        self.name = DEFAULT_ENCODER_NAME if Path(self.path).resolve() == Path(default).resolve() else self.path
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.model.max_seq_length = max_length
        self.max_length = max_length
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())
        weights = sorted(Path(self.path).glob("*.safetensors")) or sorted(Path(self.path).glob("*.bin"))
        self.digest = sha256_file(weights[0])[:16] if weights else "unknown"

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "digest": self.digest, "dimension": self.dimension,
                "max_length": self.max_length, "normalised": True}

    def encode(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


@lru_cache(maxsize=4)
def shared_embedder(path: str | None = None, max_length: int = 64) -> Embedder:
    """One loaded encoder per (path, max_length) per process."""
    return Embedder(path, max_length)


class OrtEmbedder:
    """The exported retrieval embedder, usable wherever an :class:`Embedder` is (``describe()`` says which
    encoder weights it was exported from; the index checks that). ``run``: feeds -> embeddings."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], tokenizer, description: dict) -> None:
        self.run, self.tokenizer, self.description = run, tokenizer, description
        self.max_length, self.dimension = description["max_length"], description["dimension"]

    @classmethod
    def from_assets(cls, folder: Path, run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> "OrtEmbedder":
        """From an export's ``assets/embedder`` folder (tokenizer + the encoder description)."""
        from shelfml.exports import EMBEDDER_DESCRIPTION
        from shelfml.text import load_tokenizer

        description = json.loads((Path(folder) / EMBEDDER_DESCRIPTION).read_text(encoding="utf-8"))
        return cls(run, load_tokenizer(folder), description)

    def describe(self) -> dict:
        return dict(self.description)

    def encode(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer.batch(list(texts[start:start + batch_size]), self.max_length)
            out[start:start + batch_size] = self.run({"input_ids": ids, "attention_mask": mask})
        return out


def served_embedder(assets: Path, embed: Callable[[dict[str, np.ndarray]], np.ndarray] | None) -> OrtEmbedder | None:
    """The exported retrieval encoder of an export's ``assets`` run through ``embed`` (feeds -> embeddings,
    in-process or BLS); None without ``embed``."""
    if embed is None:
        return None
    from shelfml.exports import EMBEDDER_ASSETS

    return OrtEmbedder.from_assets(Path(assets) / EMBEDDER_ASSETS, embed)

