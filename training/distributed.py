"""Data-parallel training with ``torchrun`` (PyTorch DDP: gloo on CPU, NCCL on GPU), for either family.

``torchrun --nproc_per_node N -m shelfml train tagger ...`` starts N processes; each one trains on its share of
every epoch's batches (the family's own sampler, seeded alike in every process, cut batch by batch: rank r takes
batches r, r+N, ...; every rank takes as many, so their gradient all-reduces line up), gradients are averaged by
DDP, the training loss is averaged over the processes, and only rank 0 validates, writes checkpoints and saves
the resumable state; its decisions (improved, stop) are broadcast. The checkpoint is the same format as a
single-process one.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes) from torchrun's environment; (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def start(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (NCCL with one GPU per process, else gloo)."""
    rank, size = world()
    if size == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


class RankBatches(Sampler[int]):
    """This rank's batches of ``base`` (a sampler every rank iterates identically): whole batches, dealt round
    robin; the batches that would leave ranks uneven are dropped."""

    def __init__(self, base: Sampler, batch_size: int, rank: int, size: int) -> None:
        self.base, self.batch_size, self.rank, self.size = base, batch_size, rank, size

    def __len__(self) -> int:
        return (len(self.base) // self.batch_size // self.size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        per_rank = len(order) // self.batch_size // self.size
        for b in range(per_rank):
            start = (b * self.size + self.rank) * self.batch_size
            yield from order[start : start + self.batch_size]


def shard(loader: DataLoader) -> DataLoader:
    """The loader this rank iterates: same dataset, collate and generators, its share of the batches."""
    rank, size = world()
    if size == 1:
        return loader
    sharded = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                         sampler=RankBatches(loader.sampler, loader.batch_size, rank, size))
    sharded.generator = loader.generator  # the base sampler's: saved with the state
    sharded.generators = getattr(loader, "generators", {})
    return sharded


def mean(value: float) -> float:
    """``value`` averaged over the processes."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def from_rank0(value):
    """Rank 0's ``value`` in every process (a decision only it can take: it validated)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_main() -> bool:
    return world()[0] == 0


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
