"""The tagger's I/O contract as data: the T5 encoder graph (once per request), the KV-cache decoder step (once
per decision: one new token or a run of forced ones; self-attention cache growing from 0), the served ``tagger``
model, and the shape ranges.

Export, parity checks (``atol``), the TensorRT builder (``keep_fp32``, ranges), ``config.pbtxt``
generation, the server and the client read these.
"""

from __future__ import annotations

from shelfml.contract import BATCH, GraphSpec, ShapeRanges, TensorSpec

ENCODER_SEQ, PAST_SEQ, NEW_TOKENS = "encoder_sequence", "past_decoder_sequence", "new_decoder_tokens"
# Node-name regexes TensorRT keeps in FP32 in an FP16 engine: T5 overflows FP16 in these.
T5_KEEP_FP32: tuple[str, ...] = (
    r"DenseReluDense/wo/",  # FFN output projection
    r"layer_norm(_\d+)?/",  # T5LayerNorm (also final_layer_norm): Pow, ReduceMean, Add, Sqrt, Div, Mul
    r"Softmax",  # attention softmax (HF's SelfAttention/Softmax and the decoder step's /Softmax_N)
)


def _kv(prefix: str, layers: int, heads: int, d_kv: int, kind: str, axis: str) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(f"{prefix}.{i}.{kind}.{part}", "float32", (BATCH, heads, axis, d_kv))
                 for i in range(layers) for part in ("key", "value"))


def past_name(present: str) -> str:
    """The decoder input fed by a cache output: ``present.0.decoder.key`` -> ``past_key_values.0.decoder.key``."""
    assert present.startswith("present."), f"not a cache output name: {present!r}"
    return "past_key_values." + present[len("present."):]


def t5_encoder_spec(config) -> GraphSpec:
    """input ids + mask -> hidden states and every decoder layer's cross-attention keys/values."""
    layers, heads, d_kv = config.num_decoder_layers, config.num_heads, config.d_kv
    return GraphSpec(
        name="tagger_encoder", file="encoder.onnx", atol=1e-4, keep_fp32=T5_KEEP_FP32,
        inputs=(TensorSpec("input_ids", "int64", (BATCH, ENCODER_SEQ)),
                TensorSpec("attention_mask", "int64", (BATCH, ENCODER_SEQ))),
        outputs=(TensorSpec("last_hidden_state", "float32", (BATCH, ENCODER_SEQ, config.d_model)),)
        + _kv("present", layers, heads, d_kv, "encoder", ENCODER_SEQ),
    )


def t5_decoder_spec(config) -> GraphSpec:
    """New tokens (one, or a forced run) + encoder mask + past (self and cross) -> the logits after the last
    token and the self-attention past grown by the new tokens."""
    layers, heads, d_kv = config.num_decoder_layers, config.num_heads, config.d_kv
    return GraphSpec(
        name="tagger_decoder", file="decoder.onnx", atol=1e-3, keep_fp32=T5_KEEP_FP32,
        inputs=(TensorSpec("input_ids", "int64", (BATCH, NEW_TOKENS)),
                TensorSpec("encoder_attention_mask", "int64", (BATCH, ENCODER_SEQ)))
        + _kv("past_key_values", layers, heads, d_kv, "decoder", PAST_SEQ)
        + _kv("past_key_values", layers, heads, d_kv, "encoder", ENCODER_SEQ),
        outputs=(TensorSpec("logits", "float32", (BATCH, 1, config.vocab_size)),)
        + _kv("present", layers, heads, d_kv, "decoder", f"{PAST_SEQ} + {NEW_TOKENS}"),
    )


TAGGER_SERVICE = GraphSpec(
    name="tagger",
    inputs=(TensorSpec("text", "bytes", (BATCH, 1)),),
    outputs=(TensorSpec("path", "bytes", (BATCH, 1)),  # "a > b > c"
             TensorSpec("brand", "bytes", (BATCH, 1)),  # "" when none
             TensorSpec("confidence", "float32", (BATCH, 1)),  # probability of the whole label (uncalibrated)
             TensorSpec("level_probability", "float32", (BATCH, "levels")),  # calibrated, per level, top first
             TensorSpec("backoff_path", "bytes", (BATCH, 1)),  # deepest prefix meeting its thresholds; "" if none
             TensorSpec("abstain", "bool", (BATCH, 1)),  # the whole path does not meet its threshold
             TensorSpec("alternatives", "bytes", (BATCH, "top_k")),  # top-k paths, most probable first
             TensorSpec("alternative_probability", "float32", (BATCH, "top_k")),  # their probabilities
             TensorSpec("model_version", "int64", (BATCH, 1))),  # the version that answered
)


def tagger_ranges(max_input_tokens: int, max_new_tokens: int, max_batch: int = 64) -> ShapeRanges:
    return ShapeRanges({BATCH: (1, min(8, max_batch), max_batch),
                        ENCODER_SEQ: (1, min(64, max_input_tokens), max_input_tokens),
                        PAST_SEQ: (0, max(1, max_new_tokens // 2), max_new_tokens),
                        NEW_TOKENS: (1, 1, max_new_tokens)})
