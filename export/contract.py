"""Each served graph's input/output contract, declared once as data.

ONNX export (names, dynamic axes), parity checks (tolerance), the TensorRT builder (shape
profiles), ``config.pbtxt`` generation and the gRPC client all read these specs. Names follow the
Hugging Face Optimum layout for encoder-decoder models (``input_ids``, ``encoder_attention_mask``,
``past_key_values.N.decoder.key``, ``present.N.encoder.value``, ...).

A dimension is an ``int`` (fixed) or a ``str`` naming a dynamic axis; the first axis of every
tensor is ``"batch"``. :class:`ShapeRanges` gives each named axis its (min, opt, max).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

BATCH = "batch"
TRITON_DTYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
                 "bool": "TYPE_BOOL", "bytes": "TYPE_STRING"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a key of TRITON_DTYPES; "bytes" is a UTF-8 string tensor
    dims: tuple[int | str, ...]  # first axis "batch"

    def __post_init__(self) -> None:
        assert self.dtype in TRITON_DTYPES, f"{self.name}: dtype {self.dtype!r} is not one of {sorted(TRITON_DTYPES)}"
        assert self.dims and self.dims[0] == BATCH, f"{self.name}: the first axis must be {BATCH!r}, got {self.dims}"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "bytes" else np.dtype(self.dtype)

    def triton_dims(self) -> list[int]:
        """Dims without the batch axis, dynamic axes as -1 (Triton's convention with max_batch_size > 0)."""
        return [d if isinstance(d, int) else -1 for d in self.dims[1:]]


@dataclass(frozen=True)
class GraphSpec:
    """One model as the server sees it: a graph file (ONNX leaf) or a python model (``file`` None)."""

    name: str  # the Triton model name
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    file: str | None = None  # ONNX file inside the export directory
    atol: float = 1e-4  # parity tolerance (fp32 against eager PyTorch)
    optional: tuple[str, ...] = ()  # inputs a request may leave out

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s dynamic_axes for every named axis."""
        return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in self.inputs + self.outputs}

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}; it has {self.input_names + self.output_names}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GraphSpec":
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        def tensors(items) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["dims"])) for t in items)

        return cls(name=data["name"], inputs=tensors(data["inputs"]), outputs=tensors(data["outputs"]),
                   file=data.get("file"), atol=data.get("atol", 1e-4), optional=tuple(data.get("optional", ())))


@dataclass(frozen=True)
class ShapeRanges:
    """(min, opt, max) per named axis: TensorRT optimisation profiles and Triton's limits."""

    ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for axis, (lo, opt, hi) in self.ranges.items():
            assert 0 <= lo <= opt <= hi, f"axis {axis!r}: need 0 <= min <= opt <= max, got {(lo, opt, hi)}"

    def shape(self, tensor: TensorSpec, which: int) -> tuple[int, ...]:
        """The concrete shape of ``tensor`` at min (0), opt (1) or max (2)."""
        return tuple(d if isinstance(d, int) else self.ranges[d][which] for d in tensor.dims)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.ranges.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeRanges":
        return cls({k: tuple(v) for k, v in data.items()})


# ---------------------------------------------------------------------------------------------
# The T5 tagger: encoder once, then a decoder step with a self-attention cache that grows from 0.

ENCODER_SEQ, PAST_SEQ = "encoder_sequence", "past_decoder_sequence"


def _kv(prefix: str, layers: int, heads: int, d_kv: int, kind: str, axis: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}.{i}.{kind}.{part}", "float32", (BATCH, heads, axis, d_kv))
                 for i in range(layers) for part in ("key", "value"))


def t5_encoder_spec(config) -> GraphSpec:
    """input ids + mask -> hidden states and every decoder layer's cross-attention keys/values."""
    layers, heads, d_kv = config.num_decoder_layers, config.num_heads, config.d_kv
    return GraphSpec(
        name="tagger_encoder", file="encoder.onnx", atol=1e-4,
        inputs=(TensorSpec("input_ids", "int64", (BATCH, ENCODER_SEQ)),
                TensorSpec("attention_mask", "int64", (BATCH, ENCODER_SEQ))),
        outputs=(TensorSpec("last_hidden_state", "float32", (BATCH, ENCODER_SEQ, config.d_model)),)
        + _kv("present", layers, heads, d_kv, "encoder", ENCODER_SEQ),
    )


def t5_decoder_spec(config) -> GraphSpec:
    """Last token + encoder mask + past (self and cross) -> logits and the grown self-attention past."""
    layers, heads, d_kv = config.num_decoder_layers, config.num_heads, config.d_kv
    return GraphSpec(
        name="tagger_decoder", file="decoder.onnx", atol=1e-3,
        inputs=(TensorSpec("input_ids", "int64", (BATCH, 1)),
                TensorSpec("encoder_attention_mask", "int64", (BATCH, ENCODER_SEQ)))
        + _kv("past_key_values", layers, heads, d_kv, "decoder", PAST_SEQ)
        + _kv("past_key_values", layers, heads, d_kv, "encoder", ENCODER_SEQ),
        outputs=(TensorSpec("logits", "float32", (BATCH, 1, config.vocab_size)),)
        + _kv("present", layers, heads, d_kv, "decoder", "past_decoder_sequence + 1"),
    )


TAGGER_SERVICE = GraphSpec(
    name="tagger",
    inputs=(TensorSpec("text", "bytes", (BATCH, 1)),),
    outputs=(TensorSpec("path", "bytes", (BATCH, 1)),  # "a > b > c"
             TensorSpec("brand", "bytes", (BATCH, 1)),  # "" when none
             TensorSpec("confidence", "float32", (BATCH, 1))),
)


def tagger_ranges(max_input_tokens: int, max_new_tokens: int, max_batch: int = 64) -> ShapeRanges:
    return ShapeRanges({BATCH: (1, min(8, max_batch), max_batch),
                        ENCODER_SEQ: (1, min(64, max_input_tokens), max_input_tokens),
                        PAST_SEQ: (0, max(1, max_new_tokens // 2), max_new_tokens)})


# ---------------------------------------------------------------------------------------------
# The price regressor: one graph, text (+ a picture per row and a has-picture mask) (+ the neighbour
# price features: median neighbour log1p price or NaN, top similarity) -> price.

SEQ = "sequence"
NEIGHBOUR_FEATURES = 2


def price_spec(images: bool, image_size: int | None = None, neighbours: bool = False) -> GraphSpec:
    inputs = (TensorSpec("input_ids", "int64", (BATCH, SEQ)), TensorSpec("attention_mask", "int64", (BATCH, SEQ)))
    if images:
        inputs += (TensorSpec("pixel_values", "float32", (BATCH, 3, image_size, image_size)),
                   TensorSpec("image_mask", "bool", (BATCH, 1)))
    if neighbours:
        inputs += (TensorSpec("neighbour_features", "float32", (BATCH, NEIGHBOUR_FEATURES)),)
    return GraphSpec(name="price_regressor", file="model.onnx", atol=1e-3, inputs=inputs,
                     outputs=(TensorSpec("price", "float32", (BATCH, 1)),))


PRICE_SERVICE = GraphSpec(
    name="price",
    inputs=(TensorSpec("text", "bytes", (BATCH, 1)),
            TensorSpec("image", "bytes", (BATCH, 1))),  # encoded picture file bytes; empty = none
    outputs=(TensorSpec("price", "float32", (BATCH, 1)),
             TensorSpec("has_image", "bool", (BATCH, 1))),  # False: no usable picture (missing or corrupt)
    optional=("image",),
)


def price_ranges(max_length: int, max_batch: int = 64) -> ShapeRanges:
    return ShapeRanges({BATCH: (1, min(32, max_batch), max_batch), SEQ: (1, min(128, max_length), max_length)})


# ---------------------------------------------------------------------------------------------
# The retrieval embedder (all-MiniLM-L6-v2): text ids + mask -> L2-normalised sentence embedding.

EMBEDDER_SEQ = "embedder_sequence"


def embedder_spec(dimension: int) -> GraphSpec:
    return GraphSpec(name="embedder", file="embedder.onnx", atol=1e-4,
                     inputs=(TensorSpec("input_ids", "int64", (BATCH, EMBEDDER_SEQ)),
                             TensorSpec("attention_mask", "int64", (BATCH, EMBEDDER_SEQ))),
                     outputs=(TensorSpec("embedding", "float32", (BATCH, dimension)),))
