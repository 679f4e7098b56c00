"""Shared fixtures: a small synthetic catalog, a corpus tokenizer, tiny trained tagger and price checkpoints,
a tiny encoder / vision tower and pictures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from shelfml.data import DataSpec, load_catalog, shared_data_dir
from shelfml.price import default_encoder
from shelfml.training.price import PriceArgs
from shelfml.training.trainer import TrainConfig

SHARED = shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/data is absent")


@pytest.fixture(scope="session")
def small_spec() -> DataSpec:
    return DataSpec(source="synthetic", synthetic_rows=600, synthetic_seed=1)


@pytest.fixture(scope="session")
def small_catalog(small_spec):
    return load_catalog(small_spec)


@pytest.fixture(scope="session")
def tokenizer(small_catalog):
    from shelfml.tokenizer import train_tokenizer
    from shelfml.training.tagger import tokenizer_corpus

    return train_tokenizer(tokenizer_corpus(small_catalog), vocab_size=800)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_spec) -> Path:
    """A tiny T5 trained for a few dozen steps: enough for round trips, not for accuracy."""
    from shelfml.training.tagger import TaggerArgs, train_tagger

    out = tmp_path_factory.mktemp("ckpt") / "tagger"
    args = TaggerArgs(shape="tiny", vocab_size=800, val_decode_limit=32,
                      train=TrainConfig(epochs=1, max_steps=12, batch_size=16, lr=3e-3, progress=False))
    train_tagger(small_spec, out, args)
    return out


# ---------------------------------------------------------------------------------------------
# Price fixtures: a tiny BERT encoder (MiniLM's tokenizer), a tiny CLIP vision checkpoint, pictures


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=4)).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    return out


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> dict[str, str]:
    """One path per status: two real JPEGs, a corrupt file, a missing file, a link and nothing."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for name in ("red", "blue"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / f"{name}.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {"ok": str(root / "red.jpg"), "ok2": str(root / "blue.jpg"), "corrupt": str(root / "corrupt.jpg"),
            "missing": str(root / "gone.jpg"), "link": "https://m.media-amazon.com/images/I/x.jpg", "none": ""}


def price_csv(tmp_path: Path, pictures: dict | None = None, rows: int = 60) -> Path:
    """A small CSV whose price follows a word in the title; every 3rd row has a picture."""
    rng = np.random.default_rng(0)
    words = {"budget": 20.0, "standard": 200.0, "premium": 2000.0}
    records = []
    for i in range(rows):
        word = list(words)[i % 3]
        image = (pictures["ok"] if i % 2 else pictures["ok2"]) if pictures and i % 3 == 0 else ""
        records.append({"title": f"{word} item model {i}", "price": round(words[word] * rng.uniform(0.8, 1.2), 2),
                        "img": image})
    path = tmp_path / "prices.csv"
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def fast_args(encoder: Path, **kw) -> PriceArgs:
    train = TrainConfig(epochs=2, batch_size=16, lr=3e-3, progress=False, device="cpu")
    return PriceArgs(encoder=str(encoder), max_length=32, val_limit=50, **{"train": train, **kw})


@pytest.fixture(scope="session")
def price_checkpoint(tmp_path_factory, tiny_encoder) -> Path:
    """A tiny text-only price model trained for two epochs on a 60-row CSV."""
    from shelfml.training.price import train_price

    root = tmp_path_factory.mktemp("price")
    spec = DataSpec(source=str(price_csv(root)), text_col="title", price_col="price")
    train_price(spec, root / "ckpt", fast_args(tiny_encoder))
    return root / "ckpt"


@pytest.fixture(scope="session")
def image_price_checkpoint(tmp_path_factory, tiny_encoder, tiny_vision, pictures) -> Path:
    """The same with the image branch (every third row has a picture)."""
    from shelfml.training.price import train_price

    root = tmp_path_factory.mktemp("price-images")
    spec = DataSpec(source=str(price_csv(root, pictures)), text_col="title", price_col="price", image_col="img")
    train_price(spec, root / "ckpt", fast_args(tiny_encoder, images=True, vision_model=str(tiny_vision)))
    return root / "ckpt"


@dataclass
class Served:
    """A real tritonserver serving the tiny tagger and the image price model, with their sources."""

    server: object
    repo: Path
    tagger_checkpoint: Path
    price_checkpoint: Path
    exports: dict

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory, tiny_checkpoint, image_price_checkpoint):
    """Export both tiny models, build the Triton repository, and start the real server on free ports
    with the CPU configs (python backend + ONNX Runtime)."""
    from shelfml.export.exporter import ExportArgs, export_checkpoint
    from shelfml.model_repository.build import build_repository
    from shelfml.model_repository.server import TritonServer

    root = tmp_path_factory.mktemp("served")
    args = ExportArgs(parity_rows=16, int8_max_drop=100.0)
    exports = {"tagger": root / "tagger-export", "price": root / "price-export"}
    export_checkpoint(tiny_checkpoint, exports["tagger"], args)
    export_checkpoint(image_price_checkpoint, exports["price"], args)
    build_repository(root / "repo", **exports, cpu_precision="fp32")  # served == eager, exactly (INT8: test_serving)
    with TritonServer(root / "repo", log_file=root / "triton.log") as server:
        yield Served(server, root / "repo", tiny_checkpoint, image_price_checkpoint, exports)
