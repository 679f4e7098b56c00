"""The parity sample a checkpoint carries: up to :data:`SAMPLE_ROWS` rows of its test split (model
inputs, gold labels or prices, pictures copied in), so export can check its graphs against eager
PyTorch from the checkpoint alone, without the training data.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shelfml.checkpoint import CheckpointError
from shelfml.data import LEVELS, Catalog
from shelfml.labels import Label, format_target, parse_target

PARITY_SAMPLE = "parity_sample.json"
PARITY_IMAGES = "parity_images"
SAMPLE_ROWS = 512  # as many as `shelfml export --parity-rows` compares by default


@dataclass
class ParitySample:
    inputs: list[str]  # model inputs (title + description as the model reads them)
    labels: list[Label] | None = None  # tagger
    prices: np.ndarray | None = None  # price
    images: list[str] | None = None  # picture paths ("" for none)
    source: str = "checkpoint"

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def from_catalog(cls, rows: Catalog, target: str, source: str) -> "ParitySample":
        """The rows' inputs with what a family of ``target`` (``Family.target``) is scored against."""
        if target == LEVELS:
            return cls(rows.inputs(), labels=rows.labels(), source=source)
        return cls(rows.inputs(), prices=rows.frame["price"].to_numpy(dtype=np.float64),
                   images=[str(p) for p in rows.frame["image"]], source=source)

    def head(self, n: int | None) -> "ParitySample":
        if n is None:
            return self
        return ParitySample(self.inputs[:n], self.labels and self.labels[:n],
                            None if self.prices is None else self.prices[:n], self.images and self.images[:n],
                            self.source)


def write_parity_sample(folder: Path, test: Catalog, task: str, rows: int = SAMPLE_ROWS) -> None:
    """Store the first ``rows`` test rows in a checkpoint being written; usable pictures are copied in."""
    from shelfml.families import family

    sample = ParitySample.from_catalog(test.subset(range(min(rows, len(test)))), family(task).target, "checkpoint")
    data: dict = {"split": "test", "rows": len(sample), "inputs": sample.inputs}
    if sample.labels is not None:
        data["labels"] = [format_target(lab) for lab in sample.labels]
    if sample.prices is not None:
        data["prices"] = [float(p) for p in sample.prices]
        images = []
        for i, path in enumerate(sample.images or []):
            src = Path(path) if path else None
            if src is not None and src.is_file():
                (Path(folder) / PARITY_IMAGES).mkdir(exist_ok=True)
                name = f"{PARITY_IMAGES}/{i:04d}{src.suffix.lower()}"
                shutil.copy2(src, Path(folder) / name)
                images.append(name)
            else:
                images.append("")
        data["images"] = images
    (Path(folder) / PARITY_SAMPLE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def read_parity_sample(ckpt: Path) -> ParitySample:
    """The sample stored in ``ckpt``; CheckpointError when it has none (pass --data to export)."""
    path = Path(ckpt) / PARITY_SAMPLE
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no {PARITY_SAMPLE} (written by training since this version); "
                              "pass --data CSV to score the parity checks on a split of the data")
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = [parse_target(t) for t in data["labels"]] if "labels" in data else None
    prices = np.asarray(data["prices"], dtype=np.float64) if "prices" in data else None
    images = [str(Path(ckpt) / p) if p else "" for p in data["images"]] if "images" in data else None
    return ParitySample(list(data["inputs"]), labels, prices, images, source=str(path))
