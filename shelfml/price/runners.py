"""The price model's ONNX Runtime backend: the exported graph run on :meth:`PriceRegressor.feeds`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from shelfml.exports import read_export
from shelfml.onnxrt import SessionConfig, check_names, load_session
from shelfml.price.regressor import Feeds


class OrtPrice:
    """The price graph as a backend of :meth:`PriceRegressor.predict`: feeds -> prices."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, export_dir: Path, int8: bool = False, config: SessionConfig | None = None) -> "OrtPrice":
        graph = read_export(export_dir, task="price")["graphs"]["model"]
        path = Path(export_dir) / (graph["int8"] if int8 else graph["file"])
        session = load_session(path, None, config)
        check_names(session, graph, path)
        return cls(session)

    def __call__(self, feeds: Feeds) -> np.ndarray:
        return self.session.run(["price"], {n: feeds[n] for n in self.inputs})[0][:, 0].astype(np.float64)
