"""The trainer's resumable state, saved beside the best checkpoint after every epoch (``OUT.state/``): the model's
current weights, the optimizer's moments, the scheduler, the gradient scaler, every random generator the run
draws from (torch's, the loader's shuffling generator, numpy generators the family passes) and the loop's
counters (epoch, step, best score, epochs without improvement, history). Tensors in ``state.safetensors``,
everything else in ``state.json``; never pickle.

``shelfml train ... --resume`` continues from the last saved epoch: a run killed in the middle of an epoch
redoes that epoch from the same generators, so it ends with the result of an uninterrupted run of the same seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from shelfml.cli_help import UsageError

STATE_FORMAT = 1
TENSORS, MANIFEST = "state.safetensors", "state.json"


def state_dir(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).name}.state")


def start_training(out: Path, force: bool, resume: bool, key: str) -> None:
    """Before training into ``out``: a fresh run needs it empty (or ``force``) and drops a stale state; a resumed
    one needs the state a killed run of the same settings (``key``: :func:`run_key`) left."""
    from shelfml.checkpoint import ensure_writable
    from shelfml.training.distributed import is_main

    if resume:
        path = state_dir(out)
        if not (path / MANIFEST).is_file():
            raise UsageError(f"--resume: no training state at {path} (it is written after each epoch): "
                             f"nothing to resume; start without --resume")
        saved = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("run")
        if saved != key:
            raise UsageError(f"--resume: the state at {path} belongs to a run with other settings (run {saved}, "
                             f"this one {key}): resume with the same settings, or start again with --force")
        return
    if is_main():  # under torchrun, rank 0 owns the output
        ensure_writable(out, force)
        shutil.rmtree(state_dir(out), ignore_errors=True)


def run_key(config: dict) -> str:
    """What a resumed run must share with the saved one (its settings, without the runtime switches)."""
    def kept(value):
        if isinstance(value, dict):
            return {k: kept(v) for k, v in value.items() if k not in ("progress", "device", "resume")}
        return value

    kept = kept(config)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": plain}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, saved: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_state(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, loader_generator,
               generators: dict[str, np.random.Generator], loop: dict, key: str) -> None:
    """Write the state atomically (a temporary sibling, then renamed over the last one)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim = _optimizer_tensors(optimizer)
    tensors |= optim_tensors
    tensors["rng.torch"] = torch.get_rng_state()
    if loader_generator is not None:
        tensors["rng.loader"] = loader_generator.get_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    manifest = {"format": STATE_FORMAT, "run": key, "loop": loop, "optimizer": optim,
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "generators": {name: g.bit_generator.state for name, g in generators.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shared = {}  # tied weights (T5's shared embedding) are stored once, and restored by the model itself
    for name, tensor in list(tensors.items()):
        ptr = (tensor.data_ptr(), tuple(tensor.shape))
        if name.startswith("model.") and ptr in shared:
            del tensors[name]
        shared.setdefault(ptr, name)
    save_file(tensors, str(tmp / TENSORS))
    (tmp / MANIFEST).write_text(json.dumps(manifest, default=str), encoding="utf-8")
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_state(path: Path, model: torch.nn.Module, optimizer, scheduler, scaler, loader_generator,
               generators: dict[str, np.random.Generator], key: str) -> dict:
    """Restore everything :func:`save_state` wrote; returns the loop's counters. UsageError naming the problem
    when there is nothing to resume or it is another run's state."""
    if not (path / MANIFEST).is_file():
        raise UsageError(f"--resume: no training state at {path} (it is written after each epoch; start without "
                         "--resume)")
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("run") != key:
        raise UsageError(f"--resume: the state at {path} belongs to a run with other settings (run "
                         f"{manifest.get('run')}, this one {key}): resume with the same settings, or start again "
                         "with --force")
    tensors = load_file(str(path / TENSORS))
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in weights if k in current}
    untied = [m for m in missing if current[m].data_ptr() not in loaded]  # a tied weight comes with its twin
    if unexpected or untied:
        raise UsageError(f"--resume: the state at {path} does not fit this model (missing {untied[:3]}, "
                         f"unexpected {unexpected[:3]})")
    _load_optimizer(optimizer, tensors, manifest["optimizer"])
    scheduler.load_state_dict(manifest["scheduler"])
    scaler.load_state_dict(manifest["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if loader_generator is not None:
        loader_generator.set_state(tensors["rng.loader"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
                                     or torch.cuda.get_rng_state_all())
    for name, g in generators.items():
        g.bit_generator.state = manifest["generators"][name]
    return manifest["loop"]
