"""The tagger's ONNX graphs: T5 becomes two graphs, the encoder (run once per request; it also
projects every decoder layer's cross-attention keys/values) and a decoder step with a self-attention
cache that grows from length 0. A step takes one or several new tokens (jump-forward feeds the tokens the
taxonomy forces in one call), with the causal mask inside them, and returns the logits after the last. The
step is written out from the model's own modules (no ``Cache`` objects), so the graph is plain
MatMul/Softmax/Concat that ONNX Runtime and TensorRT both take.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shelfml.contract import GraphSpec
from shelfml.export.onnx import OPSET, eager_copy, export_graph
from shelfml.tagger.contract import t5_decoder_spec, t5_encoder_spec


def _split_heads(x: torch.Tensor, heads: int, d_kv: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, heads, d_kv).transpose(1, 2)  # [B, H, L, d_kv]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scaling: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling + bias
    out = torch.matmul(F.softmax(scores.float(), dim=-1).to(v.dtype), v)  # [B, H, new, d_kv]
    return out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[3])


class T5EncoderGraph(nn.Module):
    """input ids + mask -> encoder hidden states + each decoder layer's cross-attention k/v."""

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.get_encoder()
        self.cross = nn.ModuleList(block.layer[1].EncDecAttention for block in model.decoder.block)
        self.heads, self.d_kv = model.config.num_heads, model.config.d_kv

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        kv = []
        for attn in self.cross:
            kv += [_split_heads(attn.k(hidden), self.heads, self.d_kv), _split_heads(attn.v(hidden), self.heads, self.d_kv)]
        return (hidden, *kv)


class T5DecoderStep(nn.Module):
    """New decoder tokens with a KV cache: (tokens [B, new], encoder mask, self past, cross k/v) -> (logits after
    the last token [B, 1, vocab], the self past grown by ``new``)."""

    def __init__(self, model) -> None:
        super().__init__()
        cfg = model.config
        self.embed, self.blocks = model.decoder.embed_tokens, model.decoder.block
        self.final_norm, self.lm_head = model.decoder.final_layer_norm, model.lm_head
        self.out_scale = cfg.d_model**-0.5 if getattr(cfg, "scale_decoder_outputs", False) else 1.0
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *past: torch.Tensor):
        n = len(self.blocks)
        self_past, cross = past[: 2 * n], past[2 * n :]
        x = self.embed(input_ids)
        new, past_len = input_ids.shape[1], self_past[0].shape[2]
        # relative position bias of the new tokens (positions past_len..) against positions 0..past_len + new - 1,
        # and the causal mask inside the new tokens
        bias = self.blocks[0].layer[0].SelfAttention.compute_bias(new, past_len + new, past_seen_tokens=past_len)
        later = torch.arange(past_len + new)[None, :] > (torch.arange(new)[:, None] + past_len)
        bias = bias.masked_fill(later[None, None], torch.finfo(x.dtype).min)
        mask = encoder_attention_mask[:, None, None, :].to(x.dtype)
        enc_bias = (1.0 - mask) * torch.finfo(x.dtype).min
        presents = []
        for i, block in enumerate(self.blocks):
            layer, attn = block.layer[0], block.layer[0].SelfAttention
            h = layer.layer_norm(x)
            k = torch.cat([self_past[2 * i], _split_heads(attn.k(h), self.heads, self.d_kv)], dim=2)
            v = torch.cat([self_past[2 * i + 1], _split_heads(attn.v(h), self.heads, self.d_kv)], dim=2)
            presents += [k, v]
            x = x + attn.o(_attend(_split_heads(attn.q(h), self.heads, self.d_kv), k, v, bias, attn.scaling))
            layer, attn = block.layer[1], block.layer[1].EncDecAttention
            q = _split_heads(attn.q(layer.layer_norm(x)), self.heads, self.d_kv)
            x = x + attn.o(_attend(q, cross[2 * i], cross[2 * i + 1], enc_bias, attn.scaling))
            x = block.layer[-1](x)  # feed-forward: norm, FFN, residual
        logits = self.lm_head(self.final_norm(x[:, -1:]) * self.out_scale)
        return (logits, *presents)


def export_t5(model, out_dir: Path, opset: int = OPSET) -> dict[str, GraphSpec]:
    """encoder.onnx + decoder.onnx. The examples are padded batches (a full-ones mask could let the
    tracer drop the mask) with a non-empty past."""
    model = eager_copy(model)
    cfg = model.config
    enc_spec, dec_spec = t5_encoder_spec(cfg), t5_decoder_spec(cfg)
    ids = torch.randint(2, cfg.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    encoder = T5EncoderGraph(model).eval()
    export_graph(encoder, enc_spec, (ids, mask), out_dir / enc_spec.file, opset)
    with torch.no_grad():
        cross = encoder(ids, mask)[1:]
    self_past = [torch.randn(2, cfg.num_heads, 3, cfg.d_kv) for _ in range(2 * cfg.num_decoder_layers)]
    token = torch.randint(2, cfg.vocab_size, (2, 2))  # two new tokens: the causal mask stays in the graph
    export_graph(T5DecoderStep(model).eval(), dec_spec, (token, mask, *self_past, *cross), out_dir / dec_spec.file,
                 opset)
    return {"encoder": enc_spec, "decoder": dec_spec}
