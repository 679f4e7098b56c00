"""Shared fixtures: a small synthetic catalog, a corpus tokenizer and a tiny trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from shelfml.data import DataSpec, load_catalog, shared_data_dir

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
    from shelfml.training.trainer import TrainConfig

    out = tmp_path_factory.mktemp("ckpt") / "tagger"
    args = TaggerArgs(shape="tiny", vocab_size=800, val_decode_limit=32,
                      train=TrainConfig(epochs=1, max_steps=12, batch_size=16, lr=3e-3, progress=False))
    train_tagger(small_spec, out, args)
    return out
