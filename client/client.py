"""Clients for the served ``tagger``, ``price`` and ``catalog`` models (sync and asyncio) over gRPC
(``tritonclient.grpc``, the default) or HTTP/REST (``tritonclient.http``, the KServe v2 protocol: ``protocol="http"``).

Model names, input and output names and dtypes come from ``TAGGER_SERVICE`` / ``PRICE_SERVICE`` /
``CATALOG_SERVICE`` (the models' contracts); the label format (``a > b > c``) from :mod:`shelfml.labels`. Both
clients split a call
into requests of at most ``batch_size`` rows (never more than the model's own ``max_batch_size``), give each
request a deadline (``timeout_s``, sent to the server too, so a request still queued when its client has given up
is dropped there, never computed), retry with exponential backoff and jitter, within that deadline, on the
transient errors only (UNAVAILABLE: starting, restarting, or shedding load from a full queue; NOT_FOUND "no
available versions": a model unloading during shutdown), and turn the server's INVALID_ARGUMENT into
:class:`InvalidRequestError` naming the model and reason.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from shelfml.catalog import CATALOG_SERVICE
from shelfml.contract import GraphSpec
from shelfml.price.contract import PRICE_SERVICE
from shelfml.tagger.contract import TAGGER_SERVICE
from shelfml.labels import parse_path

Image = Union[str, os.PathLike, bytes, None]  # a picture file path, its encoded bytes, or none

PROTOCOLS = ("grpc", "http")
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}  # Triton's default ports
DEFAULT_URL = DEFAULT_URLS["grpc"]
DEFAULT_TIMEOUT_S = 60.0  # per request: a batch of 64 tagged on a shared 2-core CPU takes seconds
DEFAULT_RETRIES = 4  # UNAVAILABLE retries per request: 0.5 + 1 + 2 + 4 s of backoff
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class TagResult:
    path: tuple[str, ...]  # one value per level, top first; () when the server returned no path
    brand: str  # "" when none
    confidence: float  # the model's probability of the whole label (uncalibrated)
    level_probability: tuple[float, ...] = ()  # calibrated, per level of the taxonomy, top first
    backoff_path: tuple[str, ...] = ()  # the deepest prefix whose levels meet their thresholds; () when none does
    abstain: bool = False  # the whole path does not meet its threshold
    alternatives: tuple[tuple[tuple[str, ...], float], ...] = ()  # top-k paths and probabilities, best first
    model_version: int = 0  # the tagger version that answered


@dataclass(frozen=True)
class PriceResult:
    price: float
    has_image: bool  # False: no usable picture (none given, missing or corrupt); the text alone was used
    model_version: int = 0  # the price model version that answered


@dataclass(frozen=True)
class CatalogResult:
    """One product from the ``catalog`` model: the tagger's answer (no alternatives) and the price model's."""

    tag: TagResult
    price: PriceResult
    tagger_ms: float  # each stage's server-side milliseconds, for the batch the product was in
    price_ms: float


class ClientError(RuntimeError):
    """A request failed; ``status`` is the gRPC status name (e.g. ``UNAVAILABLE``), ``model`` the model."""

    def __init__(self, msg: str, status: str | None = None, model: str | None = None):
        super().__init__(msg)
        self.status, self.model = status, model


class InvalidRequestError(ClientError):
    """The server rejected the request (INVALID_ARGUMENT): the reason is the server's own message."""


class ServerUnavailableError(ClientError):
    """The server stayed UNAVAILABLE through every retry (not running, restarting, or unreachable)."""


class OverloadedError(ServerUnavailableError):
    """The server kept shedding the request (its model's queue was full or the request waited past its
    deadline there) through every retry: send less at once, or add replicas."""


class DeadlineExceededError(ClientError):
    """A request took longer than the client's ``timeout_s``."""


SHED = ("Exceeds maximum queue size", "Request timeout expired")  # Triton's messages for a shed request


def server_timeout_us(seconds_left: float) -> int:
    """The request's server-side timeout: 90% of what is left of the client's deadline, so a request that
    waited that long in the queue is refused there, unrun, while its client still listens."""
    return max(1, int(seconds_left * 0.9 * 1e6))


def transient(e: InferenceServerException) -> bool:
    """Worth retrying: the server is starting, restarting or shedding load, or a model is unloading."""
    return status_name(e) == "UNAVAILABLE" or "no available versions" in (e.message() or "")


HTTP_STATUS = {"400": "INVALID_ARGUMENT", "404": "NOT_FOUND", "408": "DEADLINE_EXCEEDED", "409": "ALREADY_EXISTS",
               "500": "INTERNAL", "501": "UNIMPLEMENTED", "503": "UNAVAILABLE", "504": "DEADLINE_EXCEEDED"}


def status_name(e: InferenceServerException) -> str:
    """The gRPC status name of either protocol's error: ``"StatusCode.INVALID_ARGUMENT"`` (tritonclient keeps
    grpc's str) or HTTP's ``"400"`` -> ``"INVALID_ARGUMENT"``."""
    status = str(e.status() or "").rsplit(".", 1)[-1]
    return HTTP_STATUS.get(status, status)


def connection_error(e: OSError) -> InferenceServerException:
    """An HTTP transport failure as the error gRPC reports for it: a timeout is DEADLINE_EXCEEDED, a refused
    or dropped connection UNAVAILABLE (retried)."""
    status = "DEADLINE_EXCEEDED" if isinstance(e, TimeoutError) else "UNAVAILABLE"
    return InferenceServerException(msg=f"{type(e).__name__}: {e}", status=status)


def _error(e: InferenceServerException, model: str, attempts: int) -> ClientError:
    status, msg = status_name(e), e.message()
    if status == "INVALID_ARGUMENT":
        return InvalidRequestError(f"{model}: the server rejected the request: {msg}", status, model)
    if status == "UNAVAILABLE" and any(m in (msg or "") for m in SHED):
        return OverloadedError(f"{model}: the server shed the request {attempts} time(s) (overloaded): {msg}",
                               status, model)
    if transient(e):
        return ServerUnavailableError(f"{model}: server unavailable after {attempts} attempt(s): {msg}",
                                      status, model)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(f"{model}: no answer within the client timeout: {msg}", status, model)
    return ClientError(f"{model}: {status or 'error'}: {msg}", status, model)


# ---------------------------------------------------------------------------------------------
# Requests and results as plain data: shared by the sync and async clients.


def _read_image(image: Image) -> bytes:
    if image is None:
        return b""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (pass None for a row without a picture)")
    return path.read_bytes()


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not one string: tag(['a title'])")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


def build_inputs(spec: GraphSpec, columns: dict[str, list], lib=grpcclient) -> list:
    """One ``InferInput`` per column (``lib``: ``tritonclient.grpc`` or ``.http``), named and typed by ``spec``
    (strings UTF-8 encoded, shape (rows, 1))."""
    inputs = []
    for name, values in columns.items():
        tensor = spec.tensor(name)
        if tensor.dtype == "bytes":
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
            array = np.empty((len(values), 1), dtype=object)
            array[:, 0] = values
        else:
            array = np.asarray(values, dtype=tensor.numpy_dtype).reshape(len(values), 1)
        inp = lib.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def requested_outputs(spec: GraphSpec, lib=grpcclient) -> list:
    return [lib.InferRequestedOutput(name) for name in spec.output_names]


def _checked(result, spec: GraphSpec, name: str, rows: int) -> np.ndarray:
    array = result.as_numpy(name)
    if array is None:
        raise ClientError(f"{spec.name}: the answer holds no output {name!r} (an empty answer: Triton 2.51's response "
                          "cache answers a request that failed before like this; serve without --response-cache)",
                          model=spec.name)
    if array.shape[0] != rows:
        raise ClientError(f"{spec.name}: output {name!r} has shape {array.shape}, expected {rows} rows",
                          model=spec.name)
    return array.reshape(rows, -1)


def _column(result, spec: GraphSpec, name: str, rows: int) -> np.ndarray:
    return _checked(result, spec, name, rows)[:, 0]


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)




def parse_tags(result, rows: int, spec: GraphSpec = TAGGER_SERVICE,
               version: str = "model_version") -> list[TagResult]:
    out = {n: _column(result, spec, n, rows) for n in ("path", "brand", "confidence", "backoff_path", "abstain",
                                                         version)}
    levels = _checked(result, spec, "level_probability", rows)
    if "alternatives" in spec.output_names:
        paths, probs = (_checked(result, spec, n, rows) for n in ("alternatives", "alternative_probability"))
    else:
        paths = probs = np.zeros((rows, 0))
    return [TagResult(parse_path(_text(p)), _text(b), float(c), tuple(float(v) for v in lp),
                      parse_path(_text(bp)), bool(a),
                      tuple((parse_path(_text(x)), float(y)) for x, y in zip(alt, alt_p) if _text(x)), int(v))
            for p, b, c, bp, a, v, lp, alt, alt_p in zip(out["path"], out["brand"], out["confidence"],
                                                         out["backoff_path"], out["abstain"], out[version], levels,
                                                         paths, probs)]


def parse_prices(result, rows: int, spec: GraphSpec = PRICE_SERVICE,
                 version: str = "model_version") -> list[PriceResult]:
    out = {n: _column(result, spec, n, rows) for n in ("price", "has_image", version)}
    return [PriceResult(float(p), bool(h), int(v)) for p, h, v in zip(out["price"], out["has_image"], out[version])]


def parse_catalog(result, rows: int) -> list[CatalogResult]:
    tags = parse_tags(result, rows, CATALOG_SERVICE, "tagger_version")
    prices = parse_prices(result, rows, CATALOG_SERVICE, "price_version")
    ms = {n: _column(result, CATALOG_SERVICE, n, rows) for n in ("tagger_ms", "price_ms")}
    return [CatalogResult(t, p, float(a), float(b))
            for t, p, a, b in zip(tags, prices, ms["tagger_ms"], ms["price_ms"])]


def tag_columns(texts: Sequence[str]) -> dict[str, list]:
    (text,) = TAGGER_SERVICE.input_names
    return {text: _texts(texts)}


def price_columns(texts: Sequence[str], images: Sequence[Image] | None,
                  spec: GraphSpec = PRICE_SERVICE) -> dict[str, list]:
    """The price (or catalog: the same inputs) model's request columns."""
    text, image = spec.input_names
    texts = _texts(texts)
    if images is None:
        assert image in spec.optional, f"{image!r} is not optional in the {spec.name} contract"
        return {text: texts}  # the optional input left out: every row priced from its text
    images = list(images)
    if len(images) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(images)} images: give one image (or None) per text")
    return {text: texts, image: [_read_image(i) for i in images]}


def chunks(columns: dict[str, list], size: int) -> Iterator[dict[str, list]]:
    rows = len(next(iter(columns.values())))
    for start in range(0, rows, size):
        yield {k: v[start:start + size] for k, v in columns.items()}


def _rows(columns: dict[str, list]) -> int:
    return len(next(iter(columns.values())))


# ---------------------------------------------------------------------------------------------


def _connect(protocol: str, url: str, timeout_s: float, aio: bool):
    """(the tritonclient module whose InferInput the requests use, a connected client)."""
    if protocol == "grpc":
        return grpcclient, (grpcaio if aio else grpcclient).InferenceServerClient(url)
    if protocol != "http":
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    import tritonclient.http as httpclient

    if aio:
        import tritonclient.http.aio as httpaio

        return httpclient, httpaio.InferenceServerClient(url, conn_timeout=timeout_s)
    return httpclient, httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


class _Settings:
    def __init__(self, url: str, timeout_s: float, retries: int, batch_size: int, backoff_s: float, protocol: str,
                 aio: bool):
        assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
        assert retries >= 0, f"retries must be >= 0, got {retries}"
        self.url, self.timeout_s, self.retries, self.batch_size, self.backoff_s = (
            url, timeout_s, retries, batch_size, backoff_s)
        self.protocol = protocol
        self._lib, self._client = _connect(protocol, url, timeout_s, aio)
        self._max_batch: dict[str, int] = {}

    def client_timeout(self, left: float) -> dict:
        """The per-call client deadline: a keyword of every gRPC call; HTTP sets it once, on the connection."""
        return {"client_timeout": left} if self.protocol == "grpc" else {}

    def config_call(self, model: str, left: float):
        kw = {"as_json": True} if self.protocol == "grpc" else {}
        return self._client.get_model_config(model, **kw, **self.client_timeout(left))

    def request(self, spec: GraphSpec, chunk: dict[str, list]) -> tuple[list, list]:
        """(inputs, requested outputs) of one chunk: built once, sent again by every retry."""
        return build_inputs(spec, chunk, self._lib), requested_outputs(spec, self._lib)

    def infer_call(self, spec: GraphSpec, request: tuple[list, list], left: float):
        inputs, outputs = request
        return self._client.infer(spec.name, inputs, outputs=outputs, timeout=server_timeout_us(left),
                                  **self.client_timeout(left))

    def learn_limit(self, model: str, config: dict) -> int:
        """The model's ``max_batch_size`` from its config (gRPC wraps it in ``config``) -> rows per request."""
        self._max_batch[model] = int(config.get("config", config).get("max_batch_size", 0))
        return self.rows_per_request(model)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter (0.5x-1.5x), so shed clients do not come back in step."""
        return self.backoff_s * 2 ** attempt * random.uniform(0.5, 1.5)

    def retry_after(self, e: InferenceServerException, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying a failed attempt, or None: not transient, out of retries, or the
        wait would pass the deadline."""
        if not transient(e) or attempt >= self.retries:
            return None
        wait = self.delay(attempt)
        return wait if time.monotonic() + wait < deadline else None

    @staticmethod
    def remaining(deadline: float, model: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(f"{model}: no answer within the client timeout", "DEADLINE_EXCEEDED", model)
        return left

    def rows_per_request(self, model: str) -> int:
        limit = self._max_batch.get(model, 0)
        return min(self.batch_size, limit) if limit > 0 else self.batch_size


class ShelfmlClient(_Settings):
    """Synchronous client: ``tag(texts)``, ``price(texts, images)``; requests run one after another."""

    def __init__(self, url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 batch_size: int = DEFAULT_BATCH_SIZE, backoff_s: float = DEFAULT_BACKOFF_S, protocol: str = "grpc"):
        super().__init__(url or DEFAULT_URLS.get(protocol, DEFAULT_URL), timeout_s, retries, batch_size, backoff_s,
                         protocol, aio=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ShelfmlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self, *models: str) -> bool:
        """Server ready (with strict readiness: every model), and each named model ready; False if unreachable."""
        kw = self.client_timeout(self.timeout_s)
        try:
            return bool(self._client.is_server_ready(**kw)) and all(self._client.is_model_ready(m, **kw)
                                                                    for m in models)
        except (InferenceServerException, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0, *models: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready(*models):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"{self.url} not ready after {timeout_s:.0f} s", "UNAVAILABLE")
            time.sleep(0.25)

    def _call(self, model: str, fn: Callable[[float], object]):
        """``fn(seconds left)``, retried on transient errors within one deadline of ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            try:
                try:
                    return fn(self.remaining(deadline, model))
                except OSError as e:  # HTTP's transport errors (gRPC reports them as statuses)
                    raise connection_error(e) from None
            except InferenceServerException as e:
                wait = self.retry_after(e, attempt, deadline)
                if wait is None:
                    raise _error(e, model, attempt + 1) from None
                time.sleep(wait)

    def _limit(self, model: str) -> int:
        if model not in self._max_batch:
            return self.learn_limit(model, self._call(model, lambda left: self.config_call(model, left)))
        return self.rows_per_request(model)

    def _infer(self, spec: GraphSpec, columns: dict[str, list], parse) -> list:
        if _rows(columns) == 0:
            return []
        results = []
        for chunk in chunks(columns, self._limit(spec.name)):
            request = self.request(spec, chunk)
            result = self._call(spec.name, lambda left: self.infer_call(spec, request, left))
            results += parse(result, _rows(chunk))
        return results

    def tag(self, texts: Sequence[str]) -> list[TagResult]:
        return self._infer(TAGGER_SERVICE, tag_columns(texts), parse_tags)

    def price(self, texts: Sequence[str], images: Sequence[Image] | None = None) -> list[PriceResult]:
        return self._infer(PRICE_SERVICE, price_columns(texts, images), parse_prices)

    def catalog(self, texts: Sequence[str], images: Sequence[Image] | None = None) -> list[CatalogResult]:
        """Path, brand, confidence and price of each product in one call (the ``catalog`` model)."""
        return self._infer(CATALOG_SERVICE, price_columns(texts, images, CATALOG_SERVICE), parse_catalog)


class AsyncShelfmlClient(_Settings):
    """asyncio client: same calls as :class:`ShelfmlClient`, awaited; a call's requests run concurrently
    (at most ``concurrency`` in flight)."""

    def __init__(self, url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 batch_size: int = DEFAULT_BATCH_SIZE, backoff_s: float = DEFAULT_BACKOFF_S, concurrency: int = 4,
                 protocol: str = "grpc"):
        assert concurrency >= 1, f"concurrency must be >= 1, got {concurrency}"
        super().__init__(url or DEFAULT_URLS.get(protocol, DEFAULT_URL), timeout_s, retries, batch_size, backoff_s,
                         protocol, aio=True)
        self._slots = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncShelfmlClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def ready(self, *models: str) -> bool:
        kw = self.client_timeout(self.timeout_s)
        try:
            if not await self._client.is_server_ready(**kw):
                return False
            for m in models:
                if not await self._client.is_model_ready(m, **kw):
                    return False
            return True
        except (InferenceServerException, OSError):
            return False

    async def wait_ready(self, timeout_s: float = 60.0, *models: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready(*models):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"{self.url} not ready after {timeout_s:.0f} s", "UNAVAILABLE")
            await asyncio.sleep(0.25)

    async def _call(self, model: str, fn: Callable[[float], object]):
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            try:
                try:
                    return await fn(self.remaining(deadline, model))
                except OSError as e:  # HTTP's transport errors (aiohttp's connection errors, timeouts)
                    raise connection_error(e) from None
            except InferenceServerException as e:
                wait = self.retry_after(e, attempt, deadline)
                if wait is None:
                    raise _error(e, model, attempt + 1) from None
                await asyncio.sleep(wait)

    async def _limit(self, model: str) -> int:
        if model not in self._max_batch:
            return self.learn_limit(model, await self._call(model, lambda left: self.config_call(model, left)))
        return self.rows_per_request(model)

    async def _one(self, spec: GraphSpec, chunk: dict[str, list], parse) -> list:
        request = self.request(spec, chunk)
        async with self._slots:
            result = await self._call(spec.name, lambda left: self.infer_call(spec, request, left))
        return parse(result, _rows(chunk))

    async def _infer(self, spec: GraphSpec, columns: dict[str, list], parse) -> list:
        if _rows(columns) == 0:
            return []
        size = await self._limit(spec.name)
        parts = await asyncio.gather(*(self._one(spec, c, parse) for c in chunks(columns, size)))
        return [r for part in parts for r in part]

    async def tag(self, texts: Sequence[str]) -> list[TagResult]:
        return await self._infer(TAGGER_SERVICE, tag_columns(texts), parse_tags)

    async def price(self, texts: Sequence[str], images: Sequence[Image] | None = None) -> list[PriceResult]:
        return await self._infer(PRICE_SERVICE, price_columns(texts, images), parse_prices)

    async def catalog(self, texts: Sequence[str], images: Sequence[Image] | None = None) -> list[CatalogResult]:
        return await self._infer(CATALOG_SERVICE, price_columns(texts, images, CATALOG_SERVICE), parse_catalog)
