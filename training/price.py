"""Train the price regressor: data -> split -> (neighbour price features) -> encoder (+ vision) -> the shared
trainer -> checkpoint."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from shelfml.checkpoint import read_manifest, update_manifest, write_checkpoint
from shelfml.data import DataSpec, load_catalog, split_catalog
from shelfml.drift import price_reference
from shelfml.images import AugmentConfig, describe_counts
from shelfml.metrics import price_metrics
from shelfml.parity import write_parity_sample
from shelfml.retrieval.policy import store_index
from shelfml.price import LOSSES, PriceConfig, default_encoder, resolve_pooling, to_log
from shelfml.price.hf import model_card
from shelfml.price.model import build_regressor, to_torch
from shelfml.training.distributed import is_main
from shelfml.training.state import run_key, start_training, state_dir
from shelfml.training.trainer import TrainConfig, fit


@dataclass
class PriceArgs:
    encoder: str | None = None  # local Hugging Face encoder directory (default: the packaged all-MiniLM-L6-v2)
    pooling: str = "auto"  # auto | mean | cls ("auto" reads the sentence-transformers pooling, else mean)
    loss: str = "smape"  # smape | mse-log | huber-log
    max_length: int = 128  # text tokens
    hidden: int = 256
    dropout: float = 0.4
    freeze_layers: int = 0  # freeze the embeddings and this many bottom encoder layers (-1: all of it)
    images: bool = False  # add the image branch
    vision_model: str | None = None  # local CLIP checkpoint; otherwise a small CLIP vision tower from scratch
    mixup: float = 0.0  # MixUp alpha (0: off)
    neighbours: int = 0  # K of the neighbour price feature (0: off); needs retrieval_index
    wide: bool = True  # the wide branch: the head corrects a TF-IDF ridge's log price (shelfml.price.wide)
    retrieval_index: str | None = None  # `shelfml index build` directory (built from the training split)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mlflow: str | None = None  # local MLflow file store (off when None)
    split_seed: int = 0
    val_limit: int | None = 2000  # validation rows predicted each epoch
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=2e-4, patience=2))

    def __post_init__(self) -> None:
        assert self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"
        assert self.mixup >= 0, f"mixup alpha must be >= 0, got {self.mixup}"
        assert self.neighbours >= 0, f"neighbours must be >= 0, got {self.neighbours}"


class LengthBucketSampler(Sampler[int]):
    """Shuffled indices in which every run of ``batch_size`` holds similar lengths (less padding).

    Each epoch: shuffle, sort by length within windows of 50 batches, cut into batches, shuffle the
    full batches and put the one short batch last (so the loader's batches line up with these)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, window: int = 50) -> None:
        self.lengths, self.batch_size, self.window = np.asarray(lengths), batch_size, window
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        perm = self.rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        ordered = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")]
                                  for c in np.array_split(perm, list(range(span, len(perm), span)))])
        batches = [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        for i in self.rng.permutation(len(batches)):
            yield from batches[i].tolist()
        for b in last:
            yield from b.tolist()


@contextlib.contextmanager
def tracking(store: str | None, run_name: str, params: dict) -> Iterator[Callable[[dict, int], None]]:
    """Local MLflow logging when ``store`` is set and mlflow is installed; otherwise a no-op logger."""
    mlflow = None
    if store:
        try:
            import mlflow
        except ImportError:
            print("shelfml: mlflow is not installed; --mlflow ignored", file=sys.stderr)
    if mlflow is None:
        yield lambda metrics, step: None
        return
    mlflow.set_tracking_uri(Path(store).resolve().as_uri())
    mlflow.set_experiment("shelfml-price")
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(params).items()})
        yield lambda metrics, step: mlflow.log_metrics(
            {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}, step=step)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _neighbour_feature(args: PriceArgs, parts: dict) -> tuple[object, np.ndarray | None]:
    """(retriever, leakage-free neighbour features of the training rows), or (None, None) without the feature."""
    if not args.neighbours:
        return None, None
    from shelfml.retrieval import neighbour_price_features, training_neighbours, training_retriever

    retriever = training_retriever(args.retrieval_index, f"--neighbours {args.neighbours}", parts)
    print(f"shelfml: neighbour price feature of {len(parts['train']):,} training rows (k={args.neighbours}, "
          "same normalised title excluded)", file=sys.stderr)
    neighbours = training_neighbours(retriever, parts["train"], args.neighbours, args.train.progress)
    return retriever, neighbour_price_features(retriever, neighbours)


def _wide_branch(args: PriceArgs, train, val) -> tuple[object, np.ndarray | None]:
    """(the wide branch fitted on the training split, its out-of-fold log prices of the training rows), or
    (None, None) with ``--no-wide``."""
    if not args.wide:
        return None, None
    from shelfml.price.wide import WideRidge

    labels = train.labels()
    wide, oof = WideRidge.fit(train.inputs(), to_log(train.frame["price"]), val.inputs(), val.frame["price"].to_numpy(),
                              train.frame["text"].tolist(), {"path": [lab.path for lab in labels],
                                                             "brand": [lab.brand for lab in labels]})
    info = wide.fit_info
    print(f"shelfml: wide branch: ridge on {', '.join(info.blocks)} (alpha {info.alpha}, n-gram weight "
          f"{info.text_weight}): validation SMAPE {info.validation_smape:.2f}", file=sys.stderr)
    return wide, oof


def _train_loader(regressor, train, args: PriceArgs, neighbour_features: np.ndarray | None,
                  wide_features: np.ndarray | None = None) -> DataLoader:
    """Batches of the regressor's feeds (augmented pictures) + log1p labels, bucketed by token length."""
    texts, images = train.inputs(), train.frame["image"].tolist()
    log_prices = to_log(train.frame["price"])
    rng = np.random.default_rng(args.train.seed)
    augment = args.augment if args.images else None

    def collate(idx: list[int]) -> dict:
        feeds = regressor.feeds([texts[i] for i in idx], [images[i] for i in idx],
                                None if neighbour_features is None else neighbour_features[idx], augment, rng,
                                None if wide_features is None else wide_features[idx])
        return {**to_torch(feeds), "labels": torch.as_tensor(log_prices[idx], dtype=torch.float32)}

    lengths = [int(mask.sum()) for mask in regressor.tokenizer.batch(texts, regressor.cfg.max_length)[1]]
    sampler = LengthBucketSampler(lengths, args.train.batch_size, args.train.seed)
    loader = DataLoader(list(range(len(texts))), batch_size=args.train.batch_size, collate_fn=collate,
                        sampler=sampler)
    loader.generators = {"sampler": sampler.rng, "augment": rng}  # saved and restored with the training state
    return loader


def _manifest(spec: DataSpec, catalog, split, args: PriceArgs, regressor, encoder: str, image_counts: dict) -> dict:
    from shelfml.retrieval import PRICE_FEATURES

    cfg, model, retriever = regressor.cfg, regressor.model, regressor.retriever
    return {
        "task": "price",
        "target": {"transform": "log1p", "inverse": "expm1, clipped at 0", "loss": cfg.loss},
        "data": {"spec": asdict(spec), "source": catalog.source, "rows": len(catalog),
                 "fingerprint": catalog.fingerprint(), "skipped": catalog.skipped},
        "split": split.to_dict(),
        "model": cfg.to_dict(),
        "encoder": {"init": encoder, "type": model.text_encoder.config.model_type, "pooling": cfg.pooling,
                    "pooling_requested": args.pooling, "hidden_size": model.text_encoder.config.hidden_size,
                    "frozen_layers": args.freeze_layers},
        "vision": ({"init": args.vision_model or "scratch", "type": "clip_vision_model",
                    "hidden_size": model.vision.config.hidden_size, "image": cfg.image, "fusion":
                    f"cross-attention, {cfg.attention_heads} heads, text queries, image keys/values"}
                   if args.images else None),
        "images": image_counts,
        "retrieval": ({"format": {"k": args.neighbours, "feature": "price", "inputs": list(PRICE_FEATURES)},
                       "index": retriever.describe(), "exclude_same_title_at_training": True}
                      if retriever is not None else None),
        "wide": regressor.wide and {"dir": "wide", **asdict(regressor.wide.fit_info)},
        "parameters": {"total": sum(p.numel() for p in model.parameters()),
                       "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "training": {**asdict(args), "train": args.train.to_dict()},
    }


def train_price(spec: DataSpec, out: Path, args: PriceArgs, force: bool = False) -> dict:
    """Train, keep the best validation checkpoint (lowest SMAPE) in ``out``, and return its manifest."""
    key = run_key({**asdict(args), "train": args.train.to_dict()})
    start_training(out, force, args.train.resume, key)
    torch.manual_seed(args.train.seed)
    catalog = load_catalog(spec, task="price").report_skipped()
    parts, split = split_catalog(catalog, seed=args.split_seed)
    train, val = parts["train"], parts["validation"]
    if args.val_limit:
        val = val.subset(np.arange(min(len(val), args.val_limit)))
    retriever, neighbour_features = _neighbour_feature(args, parts)
    wide, wide_features = _wide_branch(args, train, parts["validation"])
    encoder = args.encoder or default_encoder()
    cfg = PriceConfig(pooling=resolve_pooling(encoder, args.pooling), loss=args.loss, hidden=args.hidden,
                      dropout=args.dropout, max_length=args.max_length, images=args.images, mixup_alpha=args.mixup,
                      neighbours=args.neighbours, wide=wide is not None,
                      target_mean=float(to_log(train.frame["price"]).mean()))
    regressor = build_regressor(cfg, encoder, args.vision_model, args.freeze_layers, retriever, wide)
    loader = _train_loader(regressor, train, args, neighbour_features, wide_features)
    image_counts = {}
    if args.images:
        image_counts = {name: regressor.store.count(p.frame["image"]) for name, p in (("train", train),
                                                                                     ("validation", val))}
        for name, counts in image_counts.items():
            print(f"shelfml: {name} images: {describe_counts(counts)}", file=sys.stderr)
    val_texts, val_images, val_prices = val.inputs(), val.frame["image"].tolist(), val.frame["price"].to_numpy()
    val_neighbours = regressor.neighbour_features(val_texts) if retriever is not None else None
    val_wide = wide.predict(val_texts) if wide is not None else None  # once, not every epoch
    manifest = _manifest(spec, catalog, split, args, regressor, encoder, image_counts)
    manifest["drift"] = {"price": price_reference(train.frame["price"])}
    epochs = itertools.count(1)
    with tracking(args.mlflow, Path(out).name, manifest["training"]) as log:

        def validate(m: torch.nn.Module) -> dict:
            metrics = price_metrics(val_prices, regressor.predict(val_texts, val_images, batch_size=64,
                                                                neighbour_features=val_neighbours,
                                                                wide_features=val_wide))
            metrics.pop("smape_by_decile")
            metrics["score"] = -metrics["smape"]
            log(metrics, next(epochs))
            return metrics

        def on_best(metrics: dict) -> None:
            manifest["metrics"] = {"validation": {k: v for k, v in metrics.items() if k != "score"}}

            def save(tmp: Path) -> None:
                regressor.save_files(tmp)
                (tmp / "README.md").write_text(model_card(manifest), encoding="utf-8")
                write_parity_sample(tmp, parts["test"], "price")
                if retriever is not None:  # the index travels inside the checkpoint
                    manifest["retrieval"]["index"] = store_index(retriever, tmp)

            write_checkpoint(out, save, manifest)

        manifest["history"] = fit(regressor.model, loader, validate, on_best, args.train, state_dir(out), key)
    if not is_main():  # torchrun: rank 0 finishes the checkpoint
        return None
    update_manifest(out, history=manifest["history"])
    shutil.rmtree(state_dir(out), ignore_errors=True)  # done: nothing to resume
    return read_manifest(out)
