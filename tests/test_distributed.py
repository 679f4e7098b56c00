"""Data-parallel training with ``torchrun`` on CPU (gloo): two processes train a tiny tagger for a few epochs;
the loss falls, one process writes the checkpoint, and it loads and predicts like a single-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shelfml.tagger import Tagger

TRAIN = ["train", "tagger", "--shape", "tiny", "--vocab-size", "800", "--epochs", "2", "--batch-size", "16",
         "--lr", "3e-3", "--patience", "9", "--seed", "5", "--device", "cpu", "--rows", "500"]
TEXTS = ["stainless steel water bottle 750 ml blue", "cotton round neck t-shirt for men"]


def test_torchrun_two_processes_train_a_checkpoint_like_a_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    ddp = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "shelfml", *TRAIN,
                          "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "shelfml", *TRAIN, "--out", str(tmp_path / "single")], env=env,
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]

    history = json.loads((tmp_path / "ddp" / "shelfml.json").read_text())["history"]
    assert [h["processes"] for h in history] == [2, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    assert history[0]["step"] < json.loads((tmp_path / "single" / "shelfml.json").read_text())["history"][0]["step"]
    files = {p.name for p in (tmp_path / "single").iterdir()}
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == files  # the same checkpoint format
    taggers = [Tagger.load(tmp_path / name) for name in ("ddp", "single")]
    for tagger in taggers:
        predictions = tagger.predict(TEXTS)
        assert all(p.label.path in tagger.taxonomy for p in predictions)
    assert taggers[0].taxonomy.paths == taggers[1].taxonomy.paths
