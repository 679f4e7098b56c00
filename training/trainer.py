"""The one trainer, shared by the tagger and the price regressor.

AdamW, linear warm-up then linear decay, gradient clipping, AMP on CUDA, a progress bar with
loss and rate, validation after every epoch, early stopping, and a callback that saves the best
model. A model is anything whose ``forward(**batch)`` returns an object with ``.loss``. With a ``state``
folder it saves its resumable state after every epoch (:mod:`shelfml.training.state`) and ``resume`` continues
from it; the numpy generators a loader draws from are named in its ``generators`` attribute.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from shelfml.training import distributed
from shelfml.training.state import load_state, run_key, save_state


@dataclass
class TrainConfig:
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # fraction of all steps spent warming up
    grad_clip: float = 1.0
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs)
    # model selection
    patience: int = 3  # epochs without a better validation score before stopping
    # runtime
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    progress: bool = True
    resume: bool = False  # continue from the state saved after the last finished epoch

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; UsageError naming what this machine has."""
    from shelfml.cli_help import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                         "use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases and norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def mixed_precision(device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """AMP on CUDA (bf16 where supported, else fp16 with a gradient scaler); off on CPU."""
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    return amp, dtype, torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)


@dataclass
class _Step:
    """What one optimiser step needs: the model (and its DDP wrapper), AdamW, the schedule, mixed precision."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    amp: bool
    amp_dtype: torch.dtype
    device: torch.device
    cfg: TrainConfig

    def epoch(self, loader: DataLoader, epoch: int, step: int, total: int) -> tuple[float, int]:
        """One pass over ``loader`` (stopping at ``total`` steps): (mean training loss, steps taken so far)."""
        running, seen, start = 0.0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", disable=not self.cfg.progress, leave=False,
                   mininterval=2.0)
        for batch in bar:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                loss = self.net(**batch).loss
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            step, running, seen = step + 1, running + loss.item(), seen + 1
            rate = seen * loader.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                            ex_s=f"{rate:.0f}")
            if step >= total:
                break
        return running / max(seen, 1), step


def _setup(model: torch.nn.Module, train_loader: DataLoader, cfg: TrainConfig) -> tuple[_Step, DataLoader, int]:
    """The device (torchrun: this process's), this process's loader, the optimiser and schedule, total steps."""
    device = distributed.start(pick_device(cfg.device))
    model.to(device)
    train_loader = distributed.shard(train_loader)  # torchrun: this process's share of every epoch's batches
    net = model
    if distributed.world()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg)
    total = cfg.max_steps or cfg.epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    amp, amp_dtype, scaler = mixed_precision(device)
    return _Step(model, net, optimizer, scheduler, scaler, amp, amp_dtype, device, cfg), train_loader, total


def fit(
    model: torch.nn.Module,
    train_loader: DataLoader,
    validate: Callable[[torch.nn.Module], dict],
    on_best: Callable[[dict], None],
    cfg: TrainConfig,
    state: Path | None = None,
    key: str | None = None,
) -> list[dict]:
    """Train ``model``; ``validate`` returns metrics with a comparable ``score`` (higher is better). ``state``:
    where the resumable state goes after every epoch (and, with ``cfg.resume``, where it is read from); ``key``:
    the run's settings (:func:`~shelfml.training.state.run_key`, default: of ``cfg``) a resumed run must match."""
    run, train_loader, total = _setup(model, train_loader, cfg)
    saved = (run.optimizer, run.scheduler, run.scaler, train_loader.generator, getattr(train_loader, "generators", {}))
    key = key or run_key(cfg.to_dict())
    loop = {"epoch": 0, "step": 0, "best": None, "stale": 0, "history": [], "done": False}
    if cfg.resume:
        loop = load_state(state, model, *saved, key)
        if loop["done"]:
            return loop["history"]
    history, best, stale, step = loop["history"], loop["best"], loop["stale"], loop["step"]
    for epoch in range(loop["epoch"] + 1, math.ceil(total / len(train_loader)) + 1):
        model.train()
        start = time.perf_counter()
        train_loss, step = run.epoch(train_loader, epoch, step, total)
        model.eval()
        with torch.no_grad():  # rank 0 validates; every process takes its decision
            metrics = distributed.from_rank0(validate(model) if distributed.is_main() else None)
        metrics.update(epoch=epoch, step=step, train_loss=distributed.mean(train_loss),
                       processes=distributed.world()[1], epoch_seconds=round(time.perf_counter() - start, 2))
        history.append(metrics)
        improved = best is None or metrics["score"] > best
        if cfg.progress and distributed.is_main():
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "score"}
            tqdm.write(f"epoch {epoch}: {shown}{'  (best)' if improved else ''}")
        best, stale = (metrics["score"], 0) if improved else (best, stale + 1)
        if improved and distributed.is_main():  # one process writes the checkpoint
            on_best(metrics)
        finished = stale >= cfg.patience or step >= total
        if state is not None and distributed.is_main():
            save_state(state, model, *saved, {"epoch": epoch, "step": step, "best": best, "stale": stale,
                                               "history": history, "done": finished}, key)
        if finished:
            break
    distributed.finish()
    return history
