"""Product pictures: loading with a reason when there is none, and CPU augmentation (PIL, numpy; no torch).

No torchvision: there is no CPU build of it here. A picture is either usable (status ``ok``) or absent
for a counted reason: ``none`` (no image given), ``link`` (a URL; nothing is fetched), ``missing``
(no such file) or ``corrupt`` (the file does not decode). Absent pictures are never replaced by a
black one: the price model masks them out.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

STATUSES = ("ok", "none", "link", "missing", "corrupt")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_LIMIT = 8192  # decoded pictures kept in memory; later ones are decoded on every use


@dataclass
class ImageSpec:
    """The vision encoder's input contract: square side and per-channel normalisation."""

    size: int = 128
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_dict(cls, data: dict) -> "ImageSpec":
        return cls(size=int(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]))

    def to_dict(self) -> dict:
        """JSON-shaped (lists), so a config survives the manifest round trip unchanged."""
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


@dataclass
class AugmentConfig:
    """Training-time augmentation; every probability 0 turns its step off."""

    crop_scale: tuple[float, float] = (0.6, 1.0)  # random resized crop: area fraction kept
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio range
    flip: float = 0.5  # horizontal flip probability
    rotate_degrees: float = 10.0  # uniform in [-d, d]
    jitter: float = 0.2  # brightness, contrast and saturation factors in [1 - j, 1 + j]
    erase: float = 0.25  # random erasing probability (a rectangle of noise after normalisation)
    erase_area: tuple[float, float] = (0.02, 0.2)

    def to_dict(self) -> dict:
        return asdict(self)


def image_status(path: str) -> str:
    """Why a path can or cannot give a picture, without decoding it (``ok`` means 'try')."""
    path = str(path).strip()
    if not path:
        return "none"
    if "://" in path:
        return "link"
    return "ok" if Path(path).is_file() else "missing"


def open_image(path: str, max_short_side: int) -> tuple[Image.Image | None, str]:
    """Decode ``path`` as RGB, scaled down so the shorter side is at most ``max_short_side``."""
    status = image_status(path)
    if status != "ok":
        return None, status
    return _decode(path, max_short_side)


def decode_image(data: bytes, max_short_side: int) -> tuple[Image.Image | None, str]:
    """The same for a picture file's bytes (as a served request carries it); empty bytes = ``none``."""
    if not data:
        return None, "none"
    return _decode(io.BytesIO(data), max_short_side)


def _decode(source, max_short_side: int) -> tuple[Image.Image | None, str]:
    try:
        with Image.open(source) as img:
            img.draft("RGB", (max_short_side, max_short_side))  # JPEG: decode at reduced size
            img = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, "corrupt"
    if min(img.size) < 1:
        return None, "corrupt"
    scale = max_short_side / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
    return img, "ok"


# ---------------------------------------------------------------------------------------------
# Transforms


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Evaluation view: shorter side resized to ``size``, then the central square."""
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(img: Image.Image, size: int, cfg: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """A random area/aspect crop resized to ``size`` (falls back to the centre crop)."""
    area = img.width * img.height
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= img.width and 0 < h <= img.height:
            left, top = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
            return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    return center_crop(img, size)


def augment(img: Image.Image, size: int, cfg: AugmentConfig, rng: np.random.Generator,
            fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Random resized crop, flip, small rotation and colour jitter (random erasing comes after
    normalisation, in :func:`random_erase`)."""
    img = random_resized_crop(img, size, cfg, rng)
    if rng.random() < cfg.flip:
        img = ImageOps.mirror(img)
    if cfg.rotate_degrees:
        img = img.rotate(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees), Image.BILINEAR, fillcolor=fill)
    if cfg.jitter:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(rng.uniform(1 - cfg.jitter, 1 + cfg.jitter))
    return img


def to_array(img: Image.Image, spec: ImageSpec) -> np.ndarray:
    """HWC uint8 -> normalised CHW float32."""
    array = np.asarray(img, dtype=np.float32) / 255.0
    array = (array - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def random_erase(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """With probability ``cfg.erase``, replace a random rectangle by standard-normal noise."""
    if rng.random() >= cfg.erase:
        return x
    _, h, w = x.shape
    for _ in range(10):
        area = h * w * rng.uniform(*cfg.erase_area)
        ratio = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
        eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x = x.copy()
            x[:, top : top + eh, left : left + ew] = rng.standard_normal((3, eh, ew), np.float32)
            return x
    return x


# ---------------------------------------------------------------------------------------------
# Store


@dataclass
class ImageStore:
    """Decodes each distinct picture once (kept scaled down), and says why a picture is absent."""

    spec: ImageSpec = field(default_factory=ImageSpec)
    _cache: dict[str, tuple[Image.Image | None, str]] = field(default_factory=dict, repr=False)

    def get(self, path: str) -> tuple[Image.Image | None, str]:
        path = str(path).strip()
        if path in self._cache:
            return self._cache[path]
        img, status = open_image(path, max_short_side=round(1.25 * self.spec.size))
        if len(self._cache) < CACHE_LIMIT or img is None:
            self._cache[path] = (img, status)
        return img, status

    def status(self, path: str) -> str:
        return self.get(path)[1]

    def count(self, paths: Iterable[str]) -> dict[str, int]:
        """Rows per status, every status listed (decodes the pictures, so corrupt files are found)."""
        counts = Counter(self.status(p) for p in paths)
        return {s: counts.get(s, 0) for s in STATUSES}

    def array_from_bytes(self, data: bytes) -> tuple[np.ndarray | None, str]:
        """The evaluation view of a picture sent as file bytes, and its status (``ok``/``none``/``corrupt``)."""
        img, status = decode_image(data, max_short_side=round(1.25 * self.spec.size))
        return (None if img is None else to_array(center_crop(img, self.spec.size), self.spec)), status

    def array(self, path: str, augment_cfg: AugmentConfig | None = None,
              rng: np.random.Generator | None = None) -> np.ndarray | None:
        """The model input for ``path``: augmented when ``augment_cfg`` is given, else the centre crop;
        ``None`` when there is no usable picture."""
        img, _ = self.get(path)
        if img is None:
            return None
        if augment_cfg is None:
            return to_array(center_crop(img, self.spec.size), self.spec)
        assert rng is not None, "augmentation needs a random generator"
        fill = tuple(round(255 * m) for m in self.spec.mean)
        x = to_array(augment(img, self.spec.size, augment_cfg, rng, fill), self.spec)
        return random_erase(x, augment_cfg, rng)


def describe_counts(counts: dict[str, int]) -> str:
    """'540 with a picture; 10,700 without (none 10,690, missing 10)' for logs."""
    absent = {s: n for s, n in counts.items() if s != "ok" and n}
    text = f"{counts.get('ok', 0):,} with a picture"
    if absent:
        text += f"; {sum(absent.values()):,} without (" + ", ".join(f"{s} {n:,}" for s, n in absent.items()) + ")"
    return text
