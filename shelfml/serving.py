"""The serving runtime shared by every model family: request validation, and the two ways a served
python model reaches a leaf graph, in-process (ONNX Runtime on the leaf's own ``model.onnx``: the CPU
configuration) or a Triton BLS request to the leaf model (the GPU configuration, where the leaf is
ONNX Runtime-GPU or a TensorRT engine).

Served code needs numpy, the Rust tokenizers, onnxruntime (and faiss for retrieval models) only: no
torch, no transformers, nothing from the training or export stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from shelfml.monitoring import ServedMetrics


MAX_TEXT_BYTES = 1 << 20  # a request string above 1 MiB is refused; shorter long texts are clipped (text.clip)
MAX_REQUEST_BYTES = 4 << 20  # all strings of one request together
NUMPY_MAJOR = 1  # the python backend corrupts tensors with numpy 2 (measured with Triton 2.51)


class RequestError(ValueError):
    """A request the server answers with INVALID_ARGUMENT and this reason."""


SERVED_CODE = 2  # the served models' model.py and the runtime they import, together (2: metrics publisher, catalog)


def check_repository_code(repo: Path) -> None:
    """Refuse a repository whose ``model.py`` files were copied by a shelfml whose runtime differs from this one:
    they call it, and would fail deep inside with a bare TypeError."""
    recorded = json.loads((Path(repo) / "repository.json").read_text(encoding="utf-8")).get("served_code")
    if recorded != SERVED_CODE:
        raise RuntimeError(f"{repo} was built by another shelfml (served code {recorded}, this one {SERVED_CODE}): "
                           "rebuild it with `shelfml repository` (or `shelfml export ... --repository`)")


def check_numpy() -> None:
    """Refuse to load under numpy 2: Triton 2.51's python backend silently corrupts tensors with it."""
    import numpy

    major = int(numpy.__version__.split(".")[0])
    if major != NUMPY_MAJOR:
        raise RuntimeError(f"numpy {numpy.__version__} is installed in the server's python; the Triton python "
                           "backend needs numpy<2 (with numpy 2 it corrupts tensors and crashes on strings)")


def served_config(args: dict) -> tuple[dict, dict[str, str]]:
    """A served python model's ``initialize`` preamble: numpy < 2, a repository this shelfml built, this model's
    files against their recorded sha256; returns (its config, its string parameters)."""
    from shelfml.integrity import verify

    check_numpy()
    repo = Path(args["model_repository"]).parent
    check_repository_code(repo)
    verify(repo, args["model_name"])  # the files this model loads
    config = json.loads(args["model_config"])
    return config, {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def decode_texts(array: np.ndarray, name: str = "text") -> list[str]:
    """A [batch, 1] BYTES tensor -> strings; RequestError for a request over :data:`MAX_REQUEST_BYTES` and
    for empty (blank, or only control/zero-width characters), oversized or non-UTF-8 rows."""
    from shelfml.text import INVISIBLE

    if array.ndim != 2 or array.shape[1] != 1:
        raise RequestError(f"input {name!r} must have shape [batch, 1], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise RequestError(f"input {name!r} holds no rows (a batch of 0)")
    raws = [value if isinstance(value, bytes) else str(value).encode() for value in array[:, 0]]
    total = sum(map(len, raws))
    if total > MAX_REQUEST_BYTES:
        raise RequestError(f"input {name!r} holds {total:,} bytes in {len(raws)} rows; the limit per request is "
                           f"{MAX_REQUEST_BYTES:,} (split it into smaller requests)")
    texts = []
    for row, raw in enumerate(raws):
        if len(raw) > MAX_TEXT_BYTES:
            raise RequestError(f"{name}[{row}] is {len(raw):,} bytes; the limit is {MAX_TEXT_BYTES:,}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"{name}[{row}] is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
        if not text.strip():
            raise RequestError(f"{name}[{row}] is empty")
        if not INVISIBLE.sub("", text).strip():
            raise RequestError(f"{name}[{row}] holds only control or zero-width characters: no text to read")
        texts.append(text)
    return texts


def text_and_pictures(pb_utils, request) -> tuple[list[str], list[bytes]]:
    """A price or catalog request's texts and picture bytes (b"" for every row when it sends no ``image``)."""
    texts = decode_texts(pb_utils.get_input_tensor_by_name(request, "text").as_numpy())
    image = pb_utils.get_input_tensor_by_name(request, "image")
    pictures = [b""] * len(texts) if image is None else [bytes(b) for b in image.as_numpy().reshape(-1)]
    if len(pictures) != len(texts):
        raise RequestError(f"{len(texts)} texts but {len(pictures)} images")
    return texts, pictures


Leaf = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> one output of a leaf graph


def bls_tensors(pb_utils, model: str, inputs: list, outputs: Sequence[str], gpu: bool = False,
                version: int = -1) -> dict:
    """One Triton BLS request to a model (whatever backend serves it; ``version`` -1: the newest loaded): its
    output tensors, in host memory or (``gpu``) in the GPU's, where a GPU leaf leaves them."""
    memory = pb_utils.TRITONSERVER_MEMORY_GPU if gpu else pb_utils.TRITONSERVER_MEMORY_CPU
    request = pb_utils.InferenceRequest(model_name=model, model_version=int(version), requested_output_names=list(outputs),
                                        inputs=inputs, preferred_memory=pb_utils.PreferredMemory(memory, 0))
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {t.name(): t for t in response.output_tensors()}


def bls_call(pb_utils, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
             version: int = -1) -> dict[str, np.ndarray]:
    """:func:`bls_tensors` from and to numpy arrays in host memory."""
    tensors = bls_tensors(pb_utils, model, [pb_utils.Tensor(k, v) for k, v in inputs.items()], outputs,
                          version=version)
    return {name: t.as_numpy() for name, t in tensors.items()}


def leaf_file(repo: Path, model: str, version: str = "1") -> Path:
    """The ONNX file a leaf version's CPU config runs (``graph.json``'s ``cpu_file``: FP32 ``model.onnx`` or the
    INT8 graph): what an in-process runner loads, the same file the leaf model itself serves. A served model's
    version N runs its leaves' version N (they are added together: ``shelfml repository --add-version``)."""
    folder = Path(repo) / model / str(version)
    return folder / json.loads((folder / "graph.json").read_text(encoding="utf-8")).get("cpu_file", "model.onnx")


def inprocess_runner(repo: Path, model: str, output: str, version: str = "1") -> Leaf:
    """A leaf graph (price_regressor, embedder) run in this process on its CPU file: feeds -> ``output``."""
    from shelfml.onnxrt import load_session

    session = load_session(leaf_file(repo, model, version))
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run([output], {n: feeds[n] for n in names})[0]


def bls_runner(pb_utils, model: str, output: str, version: int = -1) -> Leaf:
    """The same leaf reached through a Triton BLS request."""
    return lambda feeds: bls_call(pb_utils, model, feeds, [output], version)[output]



# ---------------------------------------------------------------------------------------------
# One Triton execute(): parse, skip the cancelled, run as one batch, isolate failures, count

Columns = tuple[list, ...]  # a request's rows, one list per input (texts,) or (texts, pictures)
Run = Callable[..., dict[str, np.ndarray]]  # columns -> {output name: [rows, ...] array}


def run_isolated(parsed: dict[int, Columns], run: Run) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Every request's rows as one batch through ``run``; if that raises, each request alone, so an unexpected
    failure (a bug, a leaf that fails) fails the requests that cause it and the others are answered.
    Returns (outputs per request, error message per failed request)."""
    if not parsed:
        return {}, {}
    order = list(parsed)
    columns = tuple([v for i in order for v in parsed[i][c]] for c in range(len(parsed[order[0]])))
    try:
        merged = run(*columns)
    except Exception:
        outputs, errors = {}, {}
        for i in order:
            try:
                outputs[i] = run(*parsed[i])
            except Exception as e:  # this request's own failure, reported to its client only
                errors[i] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return outputs, errors
    outputs, start = {}, 0
    for i in order:
        rows = len(parsed[i][0])
        outputs[i] = {name: value[start:start + rows] for name, value in merged.items()}
        start += rows
    return outputs, {}


def execute(pb_utils, requests, parse: Callable[[object], Columns], run: Run, dtypes: dict[str, np.dtype],
            metrics: "ServedMetrics | None" = None) -> list:
    """The responses of one ``execute()``: a cancelled request is answered CANCELLED without work, one that
    ``parse`` refuses (RequestError) INVALID_ARG, the rest run together (:func:`run_isolated`; a failure is
    INTERNAL for its own request only)."""
    import time

    error = pb_utils.TritonError
    responses: list = [None] * len(requests)
    outcome = dict.fromkeys(range(len(requests)), "ok")
    t0 = time.perf_counter()
    parsed: dict[int, Columns] = {}
    for i, request in enumerate(requests):
        if request.is_cancelled():  # its client left (deadline, disconnect): compute nothing for it
            responses[i], outcome[i] = pb_utils.InferenceResponse(error=error("cancelled", error.CANCELLED)), "cancelled"
            continue
        try:
            parsed[i] = parse(request)
        except RequestError as e:
            responses[i], outcome[i] = pb_utils.InferenceResponse(error=error(str(e), error.INVALID_ARG)), "invalid"
    t1 = time.perf_counter()
    outputs, failures = run_isolated(parsed, run)
    t2 = time.perf_counter()
    for i, message in failures.items():
        responses[i], outcome[i] = pb_utils.InferenceResponse(error=error(message, error.INTERNAL)), "error"
    for i, out in outputs.items():
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[name]).astype(dtype)) for name, dtype in dtypes.items()]
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
    if metrics is not None:
        rows = [len(parsed[i][0]) if i in parsed else _rows(r) for i, r in enumerate(requests)]
        metrics.count([outcome[i] for i in range(len(requests))], rows, (t1 - t0, t2 - t1, time.perf_counter() - t2))
    return responses


def _rows(request) -> int:
    """The rows of a request that was not parsed (refused or cancelled): its first input's batch size."""
    try:
        inputs = request.inputs()
        return int(inputs[0].shape()[0]) if inputs else 0
    except Exception:  # a malformed request: its rows are not known
        return 0
