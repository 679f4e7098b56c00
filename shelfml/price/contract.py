"""The price model's I/O contract as data: one graph from text (+ a picture slot per row and a
has-picture mask) (+ the neighbour price features) (+ the wide branch's log price) to price, the served ``price`` model, and the
shape ranges. Export, parity, TensorRT, ``config.pbtxt``, the server and the client read these.
"""

from __future__ import annotations

from shelfml.contract import BATCH, GraphSpec, ShapeRanges, TensorSpec

SEQ = "sequence"
NEIGHBOUR_FEATURES = 2  # median neighbour log1p price (NaN: unknown), top similarity
BERT_KEEP_FP32: tuple[str, ...] = (r"LayerNorm", r"Softmax")  # the MiniLM encoder's FP16-sensitive nodes


def price_spec(images: bool, image_size: int | None = None, neighbours: bool = False, wide: bool = False) -> GraphSpec:
    inputs = (TensorSpec("input_ids", "int64", (BATCH, SEQ)), TensorSpec("attention_mask", "int64", (BATCH, SEQ)))
    if images:
        inputs += (TensorSpec("pixel_values", "float32", (BATCH, 3, image_size, image_size)),
                   TensorSpec("image_mask", "bool", (BATCH, 1)))
    if neighbours:
        inputs += (TensorSpec("neighbour_features", "float32", (BATCH, NEIGHBOUR_FEATURES)),)
    if wide:
        inputs += (TensorSpec("wide_features", "float32", (BATCH, 1)),)  # the wide branch's log1p(price)
    return GraphSpec(name="price_regressor", file="model.onnx", atol=1e-3, inputs=inputs, keep_fp32=BERT_KEEP_FP32,
                     outputs=(TensorSpec("price", "float32", (BATCH, 1)),))


PRICE_SERVICE = GraphSpec(
    name="price",
    inputs=(TensorSpec("text", "bytes", (BATCH, 1)),
            TensorSpec("image", "bytes", (BATCH, 1))),  # encoded picture file bytes; empty = none
    outputs=(TensorSpec("price", "float32", (BATCH, 1)),
             TensorSpec("has_image", "bool", (BATCH, 1)),  # False: no usable picture (missing or corrupt)
             TensorSpec("model_version", "int64", (BATCH, 1))),  # the version that answered
    optional=("image",),
)


def price_ranges(max_length: int, max_batch: int = 64) -> ShapeRanges:
    return ShapeRanges({BATCH: (1, min(32, max_batch), max_batch), SEQ: (1, min(128, max_length), max_length)})
