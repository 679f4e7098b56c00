"""The price model at prediction time, without torch: tokenizer + picture store (+ neighbour index),
the ONE feeds builder every backend reads, and batched prediction through any backend.

:meth:`PriceRegressor.feeds` builds the contract's inputs (``shelfml/price/contract.py``) as numpy
arrays: token ids and mask, one picture slot per row with a has-picture mask, the neighbour features.
Eager PyTorch (:func:`shelfml.price.model.eager_runner`), ONNX Runtime (:mod:`shelfml.price.runners`)
and the served model take exactly these feeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfml.checkpoint import read_manifest
from shelfml.images import AugmentConfig, ImageSpec, ImageStore
from shelfml.price.config import ENCODER_DIR, PriceConfig
from shelfml.text import TextTokenizer, load_tokenizer

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds], np.ndarray]  # feeds -> prices (a backend)


class PriceRegressor:
    """A trained price model with its tokenizer and picture store: batched prediction in input order."""

    def __init__(self, model, tokenizer, store: ImageStore | None = None, cfg: PriceConfig | None = None,
                 retriever=None, wide=None) -> None:
        """``tokenizer``: a :class:`TextTokenizer`, or a transformers fast tokenizer (training; kept for saving)."""
        self.source_tokenizer = None if isinstance(tokenizer, TextTokenizer) else tokenizer
        self.model = model
        self.tokenizer = tokenizer if isinstance(tokenizer, TextTokenizer) else TextTokenizer.from_transformers(tokenizer)
        self.cfg = cfg or model.cfg
        self.store = store or ImageStore(ImageSpec.from_dict(self.cfg.image))
        self.retriever = retriever  # shelfml.retrieval.Retriever: the index of the neighbour feature
        assert bool(self.cfg.neighbours) == (retriever is not None), "the neighbour feature needs its index"
        self.wide = wide  # shelfml.price.wide.WideRidge: the wide branch, when cfg.wide
        assert self.cfg.wide == (wide is not None), "the wide branch needs its ridge (wide/)"

    def save_files(self, out: Path) -> None:
        """Weights + encoder config/tokenizer (+ vision config): what :meth:`load` needs."""
        from shelfml.price.model import save_price_model

        assert self.source_tokenizer is not None, "only a regressor built for training saves its files"
        save_price_model(self.model, self.source_tokenizer, out)
        if self.wide is not None:
            from shelfml.price.wide import WIDE_DIR

            self.wide.save(Path(out) / WIDE_DIR)

    @classmethod
    def load(cls, ckpt: Path, device: str = "cpu", weights: bool = True, retrieval_index: Path | None = None,
             embedder=None) -> "PriceRegressor":
        """From a checkpoint; ``weights=False`` loads only the tokenizer and config (an export's assets).
        A checkpoint with the neighbour feature needs its index: ``retrieval_index``, else the one stored in
        the checkpoint (``embedder``: another query encoder of the same weights, e.g. the exported ONNX one)."""
        manifest = read_manifest(ckpt, task="price", weights=weights)
        ckpt = Path(ckpt)
        retriever = None
        if manifest.get("retrieval"):
            from shelfml.retrieval import checkpoint_retriever

            retriever = checkpoint_retriever(manifest["retrieval"], ckpt, retrieval_index, embedder=embedder)
        cfg = PriceConfig.from_dict(manifest["model"])
        wide = None
        if cfg.wide:
            from shelfml.price.wide import WIDE_DIR, WideRidge

            wide = WideRidge.load(ckpt / WIDE_DIR)
        model = None
        if weights:
            from shelfml.price.model import load_price_model

            model = load_price_model(ckpt, cfg, device)
        return cls(model, load_tokenizer(ckpt / ENCODER_DIR), cfg=cfg, retriever=retriever, wide=wide)

    # -- feeds --------------------------------------------------------------------------------

    def neighbour_features(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """[rows, 2] neighbour price features of ``texts`` (queries that are not training rows)."""
        from shelfml.retrieval import price_neighbour_features

        return price_neighbour_features(self.retriever, texts, self.cfg.neighbours, progress=progress)

    def pictures(self, images: Sequence[str | bytes], augment: AugmentConfig | None = None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(pixel_values [rows, 3, S, S] float32, has-picture [rows] bool) from file paths or file bytes;
        rows without a usable picture keep a zero slot."""
        size = self.store.spec.size
        pixels = np.zeros((len(images), 3, size, size), dtype=np.float32)
        has = np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            array = (self.store.array_from_bytes(image)[0] if isinstance(image, (bytes, bytearray))
                     else self.store.array(image, augment, rng))
            if array is not None:
                pixels[i], has[i] = array, True
        return pixels, has

    def feeds(self, texts: Sequence[str], images: Sequence[str | bytes] | None = None,
              neighbour_features: np.ndarray | None = None, augment: AugmentConfig | None = None,
              rng: np.random.Generator | None = None, wide_features: np.ndarray | None = None) -> Feeds:
        """The contract's inputs for one batch; the neighbour and wide features computed here unless given
        (training passes leakage-free ones)."""
        ids, mask = self.tokenizer.batch(texts, self.cfg.max_length)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.cfg.images:
            pixels, has = self.pictures(images if images is not None else [""] * len(texts), augment, rng)
            feeds |= {"pixel_values": pixels, "image_mask": has[:, None]}
        if self.cfg.neighbours:
            if neighbour_features is None:
                neighbour_features = self.neighbour_features(texts)
            feeds["neighbour_features"] = np.asarray(neighbour_features, dtype=np.float32).reshape(len(texts), -1)
        if self.cfg.wide:
            if wide_features is None:
                wide_features = self.wide.predict(texts)
            feeds["wide_features"] = np.asarray(wide_features, dtype=np.float32).reshape(len(texts), 1)
        return feeds

    # -- prediction ---------------------------------------------------------------------------

    def predict(self, texts: Sequence[str], images: Sequence[str | bytes] | None = None, batch_size: int = 64,
                progress: bool = False, run: Run | None = None,
                neighbour_features: np.ndarray | None = None, wide_features: np.ndarray | None = None) -> np.ndarray:
        """Prices (expm1 of the predicted log1p, clipped at 0), in input order. ``run`` is a backend taking
        :meth:`feeds` and returning prices (eager PyTorch by default); ``neighbour_features``, ``wide_features``:
        precomputed :meth:`neighbour_features` / wide-branch log prices of ``texts`` (validation every epoch)."""
        assert images is None or len(images) == len(texts), f"{len(texts)} texts but {len(images)} images"
        if run is None:
            assert self.model is not None, "this regressor has no PyTorch weights: pass a backend's run"
            from shelfml.price.model import eager_runner

            run = eager_runner(self.model)
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
            feeds = self.feeds([texts[i] for i in idx], None if images is None else [images[i] for i in idx],
                               None if neighbours is None else neighbours[idx],
                               wide_features=None if wide_features is None else wide_features[idx])
            out[idx] = run(feeds)
        return out

    def timed_predict(self, texts: Sequence[str], images: Sequence[str | bytes] | None = None, batch_size: int = 64,
                      **kw) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        prices = self.predict(texts, images, batch_size, **kw)
        return prices, time.perf_counter() - start


def predict_records(ckpt: Path, texts: Sequence[str], batch_size: int = 64,
                    retrieval_index: Path | None = None) -> list[dict]:
    """``shelfml predict``: one JSON-ready record per text."""
    prices = PriceRegressor.load(Path(ckpt), retrieval_index=retrieval_index).predict(texts, batch_size=batch_size)
    return [{"text": text, "price": round(float(price), 4)} for text, price in zip(texts, prices)]

