"""The serving runtime shared by every model family: request validation, and the two ways a served
python model reaches a leaf graph, in-process (ONNX Runtime on the leaf's own ``model.onnx``: the CPU
configuration) or a Triton BLS request to the leaf model (the GPU configuration, where the leaf is
ONNX Runtime-GPU or a TensorRT engine).

Served code needs numpy, the Rust tokenizers, onnxruntime (and faiss for retrieval models) only: no
torch, no transformers, nothing from the training or export stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np


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


Leaf = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> one output of a leaf graph


def bls_call(pb_utils, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One Triton BLS request to a leaf model (whatever backend serves it), outputs in host memory."""
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=list(outputs),
                                        inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()],
                                        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0))
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def inprocess_runner(repo: Path, model: str, output: str) -> Leaf:
    """A leaf graph (price_regressor, embedder) run in this process on its own model.onnx: feeds -> ``output``."""
    from shelfml.onnxrt import load_session

    session = load_session(Path(repo) / model / "1" / "model.onnx")
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run([output], {n: feeds[n] for n in names})[0]


def bls_runner(pb_utils, model: str, output: str) -> Leaf:
    """The same leaf reached through a Triton BLS request."""
    return lambda feeds: bls_call(pb_utils, model, feeds, [output])[output]

