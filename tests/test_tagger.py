import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shelfml.checkpoint import MANIFEST, CheckpointError, read_manifest
from shelfml.tagger import Tagger
from shelfml.tagger.model import build_t5
from shelfml.training.tagger import _collate
from shelfml.training.trainer import TrainConfig, fit


def test_tiny_t5_loss_falls(tokenizer, small_catalog):
    torch.manual_seed(0)
    model = build_t5("tiny", tokenizer)
    rows = list(zip(small_catalog.inputs()[:64], small_catalog.labels()[:64]))
    tagger = Tagger(model, tokenizer, small_catalog.taxonomy(), max_input_tokens=64)
    loader = DataLoader(rows, batch_size=16, collate_fn=_collate(tagger))
    fixed = next(iter(loader))
    model.eval()
    with torch.no_grad():
        before = model(**fixed).loss.item()
    history = fit(model, loader, lambda m: {"score": 0.0}, lambda metrics: None,
                  TrainConfig(epochs=6, lr=3e-3, patience=99, progress=False, device="cpu"))
    model.eval()
    with torch.no_grad():
        after = model(**fixed).loss.item()
    assert len(history) == 6
    assert after < 0.6 * before, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_small_shape_is_flan_t5_small(tokenizer):
    cfg = build_t5("small", tokenizer).config
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (512, 1024, 6, 64, 8)
    assert cfg.feed_forward_proj == "gated-gelu" and cfg.is_gated_act


def test_checkpoint_manifest(tiny_checkpoint):
    manifest = read_manifest(tiny_checkpoint, task="tagger")
    assert manifest["task"] == "tagger"
    assert manifest["label_format"]["level_sep"] == " > "
    assert set(manifest["split"]["counts"]) == {"train", "validation", "test"}
    assert len(manifest["data"]["fingerprint"]) == 16
    assert manifest["versions"]["torch"].startswith("2.13")
    assert "validation" in manifest["metrics"] and manifest["history"]
    assert list(tiny_checkpoint.glob("*.safetensors")) and not list(tiny_checkpoint.glob("*.bin"))


def test_save_load_round_trip_gives_identical_predictions(tiny_checkpoint, small_catalog, tmp_path):
    texts = small_catalog.inputs()[:24]
    first = Tagger.load(tiny_checkpoint).predict(texts, batch_size=8)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    second = Tagger.load(copy).predict(texts, batch_size=5)  # batch composition must not matter
    assert [p.label for p in first] == [p.label for p in second]
    assert np.allclose([p.confidence for p in first], [p.confidence for p in second], atol=1e-5)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / MANIFEST).unlink(), "not a shelfml checkpoint"),
        (lambda d: (d / MANIFEST).write_text("{oops"), "corrupt"),
        (lambda d: (d / MANIFEST).write_text(json.dumps({"task": "dance"})), "'task' must be one of"),
        (lambda d: [p.unlink() for p in d.glob("*.safetensors")], "no \\*.safetensors"),
        (lambda d: next(d.glob("*.safetensors")).write_bytes(b"garbage"), "corrupt"),
    ],
    ids=["no-manifest", "bad-json", "bad-task", "no-weights", "garbage-weights"],
)
def test_broken_checkpoints_fail_clearly(tiny_checkpoint, tmp_path, breakage, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    breakage(broken)
    with pytest.raises(CheckpointError, match=message):
        Tagger.load(broken)


def test_wrong_task_is_refused(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="holds a tagger model, not a price model"):
        read_manifest(tiny_checkpoint, task="price")
