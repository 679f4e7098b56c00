"""The vocabulary of I/O contracts: tensors, graphs and shape ranges, declared as data.

Each model family declares its graphs with these (``shelfml/tagger/contract.py``,
``shelfml/price/contract.py``, ``shelfml/retrieval/embedder.py``); ONNX export (names, dynamic axes),
parity checks (tolerance), the TensorRT builder (shape profiles), ``config.pbtxt`` generation, the
server and the client all read them. Names follow the Hugging Face Optimum layout for encoder-decoder
models (``input_ids``, ``encoder_attention_mask``, ``past_key_values.N.decoder.key``, ...).

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
    keep_fp32: tuple[str, ...] = ()  # regexes of node names TensorRT keeps in FP32 in an FP16 engine

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
                   file=data.get("file"), atol=data.get("atol", 1e-4), optional=tuple(data.get("optional", ())),
                   keep_fp32=tuple(data.get("keep_fp32", ())))


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
