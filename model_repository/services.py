"""What the served python models do, without Triton: validate request strings, run the tagger's one
decode loop or the price graph, and shape the results. ``model.py`` files only move tensors between
Triton and these classes, so everything here is testable in-process.

A leaf graph is reached either in-process (ONNX Runtime on the leaf's own ``model.onnx``: the CPU
configuration) or through Triton BLS calls to the leaf model (the GPU configuration, where the leaf
is ONNX Runtime-GPU or a TensorRT engine). Both hand the same decode loop a step function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shelfml.decoding import Prediction, StepFn
from shelfml.labels import LEVEL_SEP

MAX_TEXT_BYTES = 1 << 20  # a request string above 1 MiB is refused; shorter long texts are truncated by tokens
NUMPY_MAJOR = 1  # the python backend corrupts tensors with numpy 2 (measured with Triton 2.51)


class RequestError(ValueError):
    """A request the server answers with INVALID_ARGUMENT and this reason."""


def check_numpy() -> None:
    """Refuse to load under numpy 2: Triton 2.51's python backend silently corrupts tensors with it."""
    import numpy

    major = int(numpy.__version__.split(".")[0])
    if major != NUMPY_MAJOR:
        raise RuntimeError(f"numpy {numpy.__version__} is installed in the server's python; the Triton python "
                           "backend needs numpy<2 (with numpy 2 it corrupts tensors and crashes on strings)")


def decode_texts(array: np.ndarray, name: str = "text") -> list[str]:
    """A [batch, 1] BYTES tensor -> strings; RequestError for empty, oversized or non-UTF-8 rows."""
    if array.ndim != 2 or array.shape[1] != 1:
        raise RequestError(f"input {name!r} must have shape [batch, 1], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise RequestError(f"input {name!r} holds no rows (a batch of 0)")
    texts = []
    for row, value in enumerate(array[:, 0]):
        raw = value if isinstance(value, bytes) else str(value).encode()
        if len(raw) > MAX_TEXT_BYTES:
            raise RequestError(f"{name}[{row}] is {len(raw):,} bytes; the limit is {MAX_TEXT_BYTES:,}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"{name}[{row}] is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
        if not text.strip():
            raise RequestError(f"{name}[{row}] is empty")
        texts.append(text)
    return texts


# ---------------------------------------------------------------------------------------------
# Step functions for the decode loop


def inprocess_step_factory(repo: Path, encoder_model: str, decoder_model: str):
    """ONNX Runtime on the leaf models' own files, in this process."""
    from shelfml.export.runtime import OrtT5, load_session

    sessions = [load_session(Path(repo) / name / "1" / "model.onnx") for name in (encoder_model, decoder_model)]
    return OrtT5(*sessions).make_step


def bls_call(pb_utils, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One Triton BLS request to a leaf model (whatever backend serves it), outputs in host memory."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                        inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
                                        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def bls_step_factory(pb_utils, encoder_model: str, decoder_model: str, encoder_outputs: Sequence[str],
                     decoder_outputs: Sequence[str]):
    """Triton BLS: the encoder leaf once, then the decoder leaf every step."""

    def call(model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return bls_call(pb_utils, model, inputs, outputs)

    def make_step(input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        enc = call(encoder_model, {"input_ids": input_ids, "attention_mask": attention_mask}, encoder_outputs[1:])
        cross = {n.replace("present", "past_key_values"): enc[n] for n in encoder_outputs[1:]}
        heads, d_kv = next(iter(cross.values())).shape[1::2]
        presents = list(decoder_outputs[1:])
        past = {n.replace("present", "past_key_values"): np.zeros((len(input_ids), heads, 0, d_kv), np.float32)
                for n in presents}

        def step(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            out = call(decoder_model, {"input_ids": tokens, "encoder_attention_mask": attention_mask, **past, **cross},
                       decoder_outputs)
            past = {n.replace("present", "past_key_values"): out[n] for n in presents}
            return out["logits"][:, -1]

        return step

    return make_step


def served_embedder(assets: Path, embed: Callable[[dict[str, np.ndarray]], np.ndarray] | None):
    """The exported retrieval encoder (its tokenizer in ``assets``) run through ``embed`` (feeds ->
    embeddings, in-process or BLS), for :class:`shelfml.retrieval.Retriever`; None without ``embed``."""
    if embed is None:
        return None
    import json

    from transformers import AutoTokenizer

    from shelfml.export.exporter import EMBEDDER_ASSETS, EMBEDDER_DESCRIPTION
    from shelfml.export.runtime import OrtEmbedder

    folder = Path(assets) / EMBEDDER_ASSETS
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return OrtEmbedder(embed, tokenizer, json.loads((folder / EMBEDDER_DESCRIPTION).read_text(encoding="utf-8")))


class TaggerService:
    """Texts -> (path, brand, confidence) with the checkpoint's tokenizer and taxonomy constraint."""

    def __init__(self, assets: Path, make_step: Callable, max_batch: int = 64, retrieval_index: Path | None = None,
                 embed: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None) -> None:
        """``retrieval_index``: the shipped index of a checkpoint trained with retrieval, queried with the
        exported embedder through ``embed`` (feeds -> embeddings); a checkpoint that needs an index and
        has none is refused at load."""
        from shelfml.tagger import Tagger

        self.tagger = Tagger.load(Path(assets), weights=False, retrieval_index=retrieval_index,
                                  embedder=served_embedder(assets, embed))
        self.make_step, self.max_batch = make_step, max_batch

    def tag(self, texts: Sequence[str]) -> list[Prediction]:
        return self.tagger.predict(list(texts), batch_size=self.max_batch, make_step=self.make_step)

    @staticmethod
    def outputs(preds: Sequence[Prediction]) -> dict[str, np.ndarray]:
        return {"path": np.array([[LEVEL_SEP.join(p.label.path).encode()] for p in preds], dtype=object),
                "brand": np.array([[p.label.brand.encode()] for p in preds], dtype=object),
                "confidence": np.array([[p.confidence] for p in preds], dtype=np.float32)}


class PriceService:
    """Texts (+ picture bytes) -> prices, through the price graph in-process or over BLS. A model trained
    with the neighbour feature queries its shipped index (``retrieval_index``) with the exported embedder
    (``embed``) first, so a client sends only text (and a picture)."""

    def __init__(self, assets: Path, run: Callable[[dict[str, np.ndarray]], np.ndarray], max_batch: int = 64,
                 retrieval_index: Path | None = None,
                 embed: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None) -> None:
        from shelfml.images import ImageSpec, ImageStore
        from shelfml.price import PriceRegressor

        regressor = PriceRegressor.load(Path(assets), weights=False, retrieval_index=retrieval_index,
                                        embedder=served_embedder(assets, embed))
        self.regressor, self.tokenizer, self.cfg = regressor, regressor.tokenizer, regressor.cfg
        self.store = ImageStore(ImageSpec.from_dict(self.cfg.image))
        self.run, self.max_batch = run, max_batch

    def feeds(self, texts: Sequence[str], images: Sequence[bytes] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        enc = self.tokenizer(list(texts), max_length=self.cfg.max_length, truncation=True, padding=True,
                             return_tensors="np")
        feeds = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
        has = np.zeros(len(texts), dtype=bool)
        if self.cfg.images:
            size = self.store.spec.size
            pixels = np.zeros((len(texts), 3, size, size), dtype=np.float32)
            for i, data in enumerate(images or [b""] * len(texts)):
                tensor, _ = self.store.tensor_from_bytes(data)
                if tensor is not None:
                    pixels[i], has[i] = tensor.numpy(), True
            feeds |= {"pixel_values": pixels, "image_mask": has[:, None]}
        if self.cfg.neighbours:
            feeds["neighbour_features"] = self.regressor.neighbour_features(texts)
        return feeds, has

    def price(self, texts: Sequence[str], images: Sequence[bytes] | None = None) -> dict[str, np.ndarray]:
        prices, has = np.zeros(len(texts), np.float32), np.zeros(len(texts), bool)
        for start in range(0, len(texts), self.max_batch):
            part = slice(start, start + self.max_batch)
            feeds, has[part] = self.feeds(texts[part], None if images is None else images[part])
            prices[part] = self.run(feeds)[:, 0]
        return {"price": prices[:, None], "has_image": has[:, None]}


def inprocess_runner(repo: Path, model: str, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A leaf graph (price_regressor, embedder) run in this process on its own model.onnx: feeds -> ``output``."""
    from shelfml.export.runtime import load_session

    session = load_session(Path(repo) / model / "1" / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run([output], {n: feeds[n] for n in names})[0]


def bls_runner(pb_utils, model: str, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The same leaf reached through a Triton BLS request."""
    return lambda feeds: bls_call(pb_utils, model, feeds, [output])[output]

