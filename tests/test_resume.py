"""Resumable training: a run killed in the middle of an epoch and resumed with ``--resume`` ends with the result
of a run never stopped (same weights, same history); the state is safetensors + JSON, never pickle.

The runs fine-tune a given T5 (``--model``): a tokenizer trained from scratch differs in its last float digits
from process to process (the unigram trainer is not deterministic), which a resumed run avoids by reading the
first run's tokenizer back, but two separate fresh runs cannot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from shelfml.training.state import MANIFEST, TENSORS, state_dir

TRAIN = ["train", "tagger", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--patience", "9", "--seed", "3",
         "--device", "cpu", "--rows", "500"]


def shelfml(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "shelfml", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def finished(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(ckpt.glob("*.safetensors"))))


def history(ckpt: Path) -> list[dict]:
    rows = json.loads((ckpt / "shelfml.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_checkpoint):
    train = [*TRAIN, "--model", str(tiny_checkpoint)]
    finished(shelfml(*train, "--out", str(tmp_path / "straight")))
    assert not state_dir(tmp_path / "straight").exists()  # a finished run leaves nothing to resume

    out = tmp_path / "killed"
    run = shelfml(*train, "--out", str(out))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (state_dir(out) / MANIFEST).is_file():  # epoch 1 is saved
        assert run.poll() is None, run.stderr.read()[-3000:]
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    run.send_signal(signal.SIGKILL)
    run.wait()
    saved = json.loads((state_dir(out) / MANIFEST).read_text())
    assert saved["loop"]["epoch"] < 3 and not saved["loop"]["done"], saved["loop"]
    assert set(load_file(str(state_dir(out) / TENSORS))) >= {"rng.torch", "rng.loader"}

    finished(shelfml(*train, "--out", str(out), "--resume"))
    straight, resumed = weights(tmp_path / "straight"), weights(out)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "the resumed run's weights differ"
    assert history(out) == history(tmp_path / "straight")
    assert not state_dir(out).exists()


def test_resume_refuses_nothing_to_resume_and_another_runs_state(tmp_path, capsys):
    from shelfml.cli import main

    assert main([*TRAIN, "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no training state" in capsys.readouterr().err
    out = tmp_path / "other"
    state_dir(out).mkdir(parents=True)
    (state_dir(out) / MANIFEST).write_text(json.dumps({"run": "0123456789abcdef", "loop": {}}))
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 2
    assert "belongs to a run with other settings" in capsys.readouterr().err
