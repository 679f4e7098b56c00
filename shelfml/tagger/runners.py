"""The tagger's step factories for the one decode loop (:mod:`shelfml.decoding`), one per backend
that runs the exported graphs: ONNX Runtime (from an export directory or a repository's leaves) and
Triton BLS. The eager PyTorch one is :func:`shelfml.tagger.model.eager_step_factory`.

ONNX Runtime keeps the KV cache in ``OrtValue``s through I/O binding (never copied through numpy between
steps); only the logits come back to the host. Cache names come from the contract (:func:`past_name`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from shelfml.decoding import StepFn
from shelfml.exports import read_export
from shelfml.onnxrt import SessionConfig, check_names, load_session
from shelfml.serving import bls_tensors
from shelfml.tagger.contract import past_name
from shelfml.tagger.predict import MakeStep


class OrtT5:
    """Encoder + KV-cache decoder sessions; :meth:`make_step` plugs into the shared decode loop."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.device = "cuda" if "CUDAExecutionProvider" in decoder.get_providers() else "cpu"
        names = [i.name for i in decoder.get_inputs()]
        self.self_names = [n for n in names if n.endswith((".decoder.key", ".decoder.value"))]
        self.present_names = [o.name for o in decoder.get_outputs()][1:]
        self.cross_outputs = [o.name for o in encoder.get_outputs()][1:]
        shape = decoder.get_inputs()[2].shape  # [batch, heads, past, d_kv]
        self.heads, self.d_kv = int(shape[1]), int(shape[3])
        # an export from before jump-forward takes one new token per call: a forced run is fed token by token
        self.one_token = decoder.get_inputs()[0].shape[1] == 1

    @classmethod
    def load(cls, export_dir: Path, int8: bool = False, config: SessionConfig | None = None) -> "OrtT5":
        manifest = read_export(export_dir, task="tagger")
        sessions = []
        for key in ("encoder", "decoder"):
            graph = manifest["graphs"][key]
            file = graph["int8"] if int8 else graph["file"]
            session = load_session(Path(export_dir) / file, None, config)
            check_names(session, graph, Path(export_dir) / file)
            sessions.append(session)
        return cls(*sessions)

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def make_step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        """Run the encoder once; return the per-token step closure over OrtValue caches."""
        mask = self._value(attention_mask.astype(np.int64))
        enc = self.encoder.io_binding()
        enc.bind_ortvalue_input("input_ids", self._value(input_ids.astype(np.int64)))
        enc.bind_ortvalue_input("attention_mask", mask)
        for out in self.encoder.get_outputs():
            enc.bind_output(out.name, self.device)
        self.encoder.run_with_iobinding(enc)
        cross = {past_name(n): v for n, v in zip(self.cross_outputs, enc.get_outputs()[1:])}
        empty = np.zeros((input_ids.shape[0], self.heads, 0, self.d_kv), dtype=np.float32)
        past = {n: self._value(empty) for n in self.self_names}

        def one(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            binding = self.decoder.io_binding()
            binding.bind_ortvalue_input("input_ids", self._value(tokens.astype(np.int64)))
            binding.bind_ortvalue_input("encoder_attention_mask", mask)
            for name, value in (past | cross).items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("logits", "cpu")
            for name in self.present_names:
                binding.bind_output(name, self.device)
            self.decoder.run_with_iobinding(binding)
            values = binding.get_outputs()
            past = {past_name(n): v for n, v in zip(self.present_names, values[1:])}
            return values[0].numpy()[:, -1]

        return token_by_token(one) if self.one_token else one


def inprocess_step_factory(repo: Path, encoder_model: str, decoder_model: str, version: str = "1") -> MakeStep:
    """ONNX Runtime on a repository's leaf models' own files (of ``version``), in this process."""
    from shelfml.serving import leaf_file

    sessions = [load_session(leaf_file(repo, name, version)) for name in (encoder_model, decoder_model)]
    return OrtT5(*sessions).make_step


def bls_step_factory(pb_utils, encoder_model: str, decoder_model: str, encoder_outputs: Sequence[str],
                      decoder_outputs: Sequence[str], device: str = "cpu", one_token: bool = False,
                      version: int = -1) -> MakeStep:
    """Triton BLS: the encoder leaf once, then the decoder leaf every step. The cache never goes through numpy:
    each response's cross-attention and self-attention tensors go back into the next request by DLPack, in the
    memory the leaf answered in (``device="gpu"``: the GPU, where a TensorRT leaf keeps them; only the logits
    come to the host). ``one_token``: a decoder leaf exported before jump-forward (one new token per call);
    ``version``: the leaves' version (-1: the newest loaded)."""
    presents = list(decoder_outputs[1:])

    def call(model: str, inputs: list, outputs: Sequence[str]) -> dict:
        return bls_tensors(pb_utils, model, inputs, outputs, gpu=device == "gpu", version=version)

    def renamed(name: str, tensor):
        return pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack())

    def make_step(input_ids: np.ndarray, attention_mask: np.ndarray) -> StepFn:
        mask = pb_utils.Tensor("encoder_attention_mask", attention_mask)
        enc = call(encoder_model, [pb_utils.Tensor("input_ids", input_ids),
                                   pb_utils.Tensor("attention_mask", attention_mask)], encoder_outputs[1:])
        cross = [renamed(past_name(n), enc[n]) for n in encoder_outputs[1:]]
        heads, d_kv = enc[encoder_outputs[1]].shape()[1::2]
        empty = np.zeros((len(input_ids), heads, 0, d_kv), np.float32)
        past = [pb_utils.Tensor(past_name(n), empty) for n in presents]

        def one(tokens: np.ndarray) -> np.ndarray:
            nonlocal past
            out = call(decoder_model, [pb_utils.Tensor("input_ids", np.ascontiguousarray(tokens)), mask, *past,
                                       *cross], decoder_outputs)
            past = [renamed(past_name(n), out[n]) for n in presents]
            return host_array(out["logits"])[:, -1]

        return token_by_token(one) if one_token else one

    return make_step


def token_by_token(one: StepFn) -> StepFn:
    """A step for a decoder that takes one new token per call (an export from before jump-forward): a forced run
    is fed one token at a time, the logits after the last returned."""
    def step(tokens: np.ndarray) -> np.ndarray:
        for i in range(tokens.shape[1] - 1):
            one(tokens[:, i : i + 1])
        return one(tokens[:, -1:])

    return step


def host_array(tensor) -> np.ndarray:
    """A Triton tensor as a host numpy array (a GPU one through DLPack: torch or CuPy, whichever is installed)."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    try:
        import torch

        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu().numpy()
    except ImportError:
        import cupy

        return cupy.asnumpy(cupy.from_dlpack(tensor.to_dlpack()))
