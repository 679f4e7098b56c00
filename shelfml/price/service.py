"""What the served ``price`` model does, without Triton or torch: texts (+ picture bytes) -> prices and
a has-picture flag, through the price graph in-process or over BLS. A model trained with the neighbour
feature queries its shipped index with the exported embedder first, so a client sends only text (and a
picture)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from shelfml.price.regressor import PriceRegressor
from shelfml.retrieval.embedder import served_embedder
from shelfml.serving import Leaf


class PriceService:
    def __init__(self, assets: Path, run: Leaf, max_batch: int = 64, embed: Leaf | None = None) -> None:
        """``run``: the price leaf (feeds -> [rows, 1] prices); ``embed``: the embedder leaf of a model trained
        with the neighbour feature (its index is inside ``assets``)."""
        self.regressor = PriceRegressor.load(Path(assets), weights=False, embedder=served_embedder(assets, embed))
        self.run, self.max_batch = run, max_batch

    def price(self, texts: Sequence[str], images: Sequence[bytes] | None = None) -> dict[str, np.ndarray]:
        prices, has = np.zeros(len(texts), np.float32), np.zeros(len(texts), bool)
        for start in range(0, len(texts), self.max_batch):
            part = slice(start, start + self.max_batch)
            pictures = None if images is None else list(images[part])
            feeds = self.regressor.feeds(list(texts[part]), pictures)
            prices[part] = self.run(feeds)[:, 0]
            if "image_mask" in feeds:
                has[part] = feeds["image_mask"][:, 0]
        return {"price": prices[:, None], "has_image": has[:, None]}
