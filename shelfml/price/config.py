"""What the price model is, without torch: its configuration (stored in the manifest), the price
transform (log1p target, expm1 back), the checkpoint's file names and the default text encoder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shelfml.encoders import default_encoder  # noqa: F401  (the price model's default encoder)
from shelfml.images import ImageSpec

LOSSES = ("smape", "mse-log", "huber-log")
POOLINGS = ("mean", "cls")
WEIGHTS = "model.safetensors"
HF_MODEL_TYPE = "shelfml-price"  # config.json's model_type (PriceModel.from_pretrained)
ENCODER_DIR = "encoder"
VISION_DIR = "vision"
# The small CLIP vision tower trained from scratch when no --vision-model is given.
SMALL_VISION = dict(image_size=128, patch_size=16, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4)
MAX_LOG_PRICE = 30.0  # log1p(price) is clamped here before expm1 (1e13: far above any price)


def to_log(price) -> np.ndarray:
    return np.log1p(np.asarray(price, dtype=np.float64))


def from_log(log_price) -> np.ndarray:
    """Back to prices: expm1, clipped at 0."""
    return np.clip(np.expm1(np.minimum(np.asarray(log_price, dtype=np.float64), MAX_LOG_PRICE)), 0, None)


def resolve_pooling(encoder_dir: str | Path, pooling: str = "auto") -> str:
    """``auto``: the sentence-transformers pooling stored beside the encoder (1_Pooling/config.json),
    else mean pooling."""
    if pooling in POOLINGS:
        return pooling
    if pooling != "auto":
        raise ValueError(f"pooling must be 'auto' or one of {POOLINGS}, got {pooling!r}")
    config = Path(encoder_dir) / "1_Pooling" / "config.json"
    if config.is_file():
        modes = json.loads(config.read_text(encoding="utf-8"))
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


@dataclass
class PriceConfig:
    """Everything needed to rebuild the model around the saved weights (stored in the manifest)."""

    pooling: str = "mean"
    loss: str = "smape"
    smape_eps: float = 1e-3
    hidden: int = 256  # MLP width
    dropout: float = 0.4
    max_length: int = 128  # text tokens
    images: bool = False
    image: dict = field(default_factory=lambda: ImageSpec().to_dict())
    attention_heads: int = 8  # text-to-image cross-attention
    mixup_alpha: float = 0.0  # MixUp of fused features and log targets in training; 0 = off
    neighbours: int = 0  # K of the neighbour price feature (0: off; needs the retrieval index it trained with)
    wide: bool = False  # the wide branch (shelfml.price.wide): the head corrects a TF-IDF ridge's log price
    target_mean: float = 0.0  # mean log1p(price) of the training rows: the head's starting point

    def __post_init__(self) -> None:
        assert self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}"
        assert self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"

    @classmethod
    def from_dict(cls, data: dict) -> "PriceConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)
