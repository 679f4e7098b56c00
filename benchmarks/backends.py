"""Every backend of the matrix as a callable on one batch of token ids, or a reason why it is skipped.

Tagger backends return the ``[batch, new_tokens]`` greedy tokens of the fixed workload: the project's own
step functions run :func:`fixed_greedy` (the unconstrained loop with EOS suppressed for exactly
``new_tokens`` steps, like ``generate(min_new_tokens=...)`` and CTranslate2's ``min_decoding_length``), and
the peers use their own generation (``model.generate`` with cache, ``Translator.translate_batch``). Price
backends return one price per row.

The models: the trained checkpoints, and random weights of the flan-t5-small shape (vocabulary 32,128) and
the default price encoder (all-MiniLM-L6-v2 with an untrained head) for speed only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from shelfml.export.onnx import OPSET
from shelfml.tagger import MakeStep
from shelfml.tagger.model import MODEL_SHAPES, eager_step_factory

FLAN_T5_VOCAB = 32128  # flan-t5-small's vocabulary size (the random reference model's)
T5_SPECIAL = {"pad": 0, "eos": 1, "unk": 2}  # the T5 convention; a trained checkpoint's tokenizer says its own
CT2_FAIL_HINT = "CTranslate2's TransformersConverter could not convert it"


@dataclass
class Backend:
    """One backend of one model: ``run(input_ids, attention_mask)`` -> outputs, or ``skipped`` with the reason."""

    name: str
    precision: str
    device: str = "cpu"
    run: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    skipped: str | None = None
    exact: bool = True  # outputs must equal the reference backend's; False: agreement is reported, not required
    make_step: MakeStep | None = None  # loop backends: the step factory (profiled: encoder vs decoder steps)
    notes: str = ""

    def __post_init__(self) -> None:
        assert (self.run is None) != (self.skipped is None), f"{self.name}: give a run function or a skip reason"

    def describe(self) -> dict:
        out = {"status": "skipped" if self.skipped else "timed", "precision": self.precision, "device": self.device,
               "agreement": "required" if self.exact else "reported"}
        if self.skipped:
            out["reason"] = self.skipped
        if self.notes:
            out["notes"] = self.notes
        return out


def threads() -> int:
    """The thread budget every backend gets: OMP_NUM_THREADS when set, else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------
# Models


def reference_t5(shape: str = "small", vocab_size: int = FLAN_T5_VOCAB, seed: int = 0):
    """Random weights of a named shape ("small" = flan-t5-small dimensions) with T5's special ids."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", pad_token_id=T5_SPECIAL["pad"],
                      eos_token_id=T5_SPECIAL["eos"], decoder_start_token_id=T5_SPECIAL["pad"],
                      **MODEL_SHAPES[shape])
    return T5ForConditionalGeneration(config).eval()


def reference_price(seed: int = 0):
    """The default price encoder (all-MiniLM-L6-v2, real weights) with an untrained MLP head."""
    from shelfml.price import PriceConfig
    from shelfml.price.model import build_regressor

    torch.manual_seed(seed)
    regressor = build_regressor(PriceConfig())
    regressor.model.eval()
    return regressor


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def export_graphs(model, out_dir: Path, task: str) -> dict[str, dict[str, Path]]:
    """FP32 + dynamic INT8 ONNX graphs of a model without a checkpoint (the random reference models):
    {"fp32": {key: path}, "int8": {key: path}}, written the way ``shelfml export`` writes them."""
    from shelfml.export.exporter import quantize_int8
    from shelfml.families import family

    out_dir.mkdir(parents=True, exist_ok=True)
    hooks = family(task).export_hooks()
    specs = hooks.export_graphs(SimpleNamespace(model=model), out_dir, OPSET)
    files: dict[str, dict[str, Path]] = {"fp32": {}, "int8": {}}
    for key, spec in specs.items():
        files["fp32"][key] = out_dir / spec.file
        files["int8"][key] = out_dir / spec.file.replace(".onnx", ".int8.onnx")
        quantize_int8(files["fp32"][key], files["int8"][key])
    return files


# ---------------------------------------------------------------------------------------------
# Tagger: the fixed 16-token greedy workload


def fixed_greedy(make_step: MakeStep, input_ids: np.ndarray, attention_mask: np.ndarray, steps: int,
                 start_id: int, eos_id: int) -> np.ndarray:
    """Exactly ``steps`` unconstrained greedy tokens through a backend's step function (EOS never chosen)."""
    with torch.inference_mode():
        step = make_step(input_ids, attention_mask)
        tokens = np.full((len(input_ids), 1), start_id, dtype=np.int64)
        out = []
        for _ in range(steps):
            logits = np.array(step(tokens), dtype=np.float32)  # a copy: the EOS column is overwritten
            logits[:, eos_id] = -np.inf
            tokens = logits.argmax(-1)[:, None].astype(np.int64)
            out.append(tokens)
    return np.concatenate(out, axis=1)


def loop_backend(name: str, make_step: MakeStep, precision: str, steps: int, start_id: int, eos_id: int,
                 exact: bool = True, device: str = "cpu", notes: str = "") -> Backend:
    """A backend that hands the project's step function to the fixed greedy loop."""
    return Backend(name, precision, device, exact=exact, make_step=make_step, notes=notes,
                   run=lambda ids, mask: fixed_greedy(make_step, ids, mask, steps, start_id, eos_id))


def generate_backend(model, steps: int) -> Backend:
    """Hugging Face ``generate``: greedy, KV cache, exactly ``steps`` new tokens."""

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                 max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1,
                                 use_cache=True)
        return out[:, 1:].numpy()  # without the decoder start token

    return Backend("eager-generate", "fp32", run=run, notes="transformers generate(), greedy with KV cache")


def convert_ctranslate2(hf_dir: Path, out_dir: Path) -> tuple[Path, list[str]]:
    """The checkpoint converted by CTranslate2's own converter (FP32 weights; INT8 is chosen at load time)."""
    import ctranslate2

    converter = ctranslate2.converters.TransformersConverter(str(hf_dir))
    converter.convert(str(out_dir), force=True)
    path = out_dir / "shared_vocabulary.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    seen: set[str] = set()
    for i, token in enumerate(vocab):
        if token in seen:  # without a tokenizer the converter names ids itself and repeats <extra_id_N>:
            vocab[i] = f"<shelfml_id_{i}>"  # give each id its own string (weights are indexed by position)
        seen.add(vocab[i])
    path.write_text(json.dumps(vocab), encoding="utf-8")
    return out_dir, vocab


def ctranslate2_backend(model_dir: Path, vocab: list[str], compute_type: str, steps: int) -> Backend:
    """``Translator.translate_batch``: greedy, exactly ``steps`` tokens (min = max decoding length)."""
    import ctranslate2

    translator = ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                       intra_threads=threads(), inter_threads=1)
    index = {token: i for i, token in enumerate(vocab)}

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        source = [[vocab[i] for i, m in zip(row, keep) if m] for row, keep in zip(ids, mask)]
        results = translator.translate_batch(source, beam_size=1, max_decoding_length=steps,
                                             min_decoding_length=steps, max_batch_size=0)
        return np.array([[index[t] for t in r.hypotheses[0]] for r in results], dtype=np.int64)

    name = "ctranslate2-" + ("int8" if compute_type == "int8" else "fp32")
    return Backend(name, compute_type.replace("float32", "fp32"), run=run, exact=compute_type != "int8",
                   notes=f"ctranslate2 {ctranslate2.__version__}, compute_type={compute_type}, "
                         f"intra_threads={threads()}")


def cuda_skip_reason() -> str | None:
    if torch.cuda.is_available():
        return None
    return f"no CUDA device: torch {torch.__version__} reports torch.cuda.is_available() == False"


def cuda_backends(fp16: Callable[[], Backend] | None) -> list[Backend]:
    """The CUDA column: ``fp16()`` (the family's eager FP16 backend, None: not implemented for it) runs when a
    GPU exists; the rest is listed with why it is not timed."""
    reason = cuda_skip_reason()
    out = []
    if reason is None and fp16 is not None:
        out.append(fp16())
    elif reason is None:
        out.append(Backend("eager-fp16-cuda", "fp16", "cuda", skipped="not implemented for this model family"))
    else:
        out.append(Backend("eager-fp16-cuda", "fp16", "cuda", skipped=reason))
    out.append(Backend("torch-compile-cuda", "fp16", "cuda", skipped=reason or
                       "not implemented in this suite: eager FP16 is the CUDA column it times"))
    try:
        import tensorrt  # noqa: F401

        trt = reason or "TensorRT engines are built by `shelfml engines` and timed through Triton, not in-process"
    except ImportError:
        trt = (reason + "; " if reason else "") + "the tensorrt package is not installed (pip install '.[gpu]')"
    out.append(Backend("tensorrt-fp16", "fp16", "cuda", skipped=trt))
    return out


def tagger_backends(model, ort_runners: dict, hf_dir: Path | None, work_dir: Path, steps: int,
                    start_id: int, eos_id: int) -> list[Backend]:
    """The tagger column: eager (generate, own loop), ONNX Runtime FP32/INT8, CTranslate2 FP32/INT8, CUDA.
    ``ort_runners`` maps "fp32"/"int8" to an :class:`OrtT5` (or a skip reason string)."""
    backends = [generate_backend(model, steps),
                loop_backend("eager-loop", eager_step_factory(model), "fp32", steps, start_id, eos_id,
                             notes="the project's step function (shelfml.tagger.eager_step_factory)")]
    for precision, runner in ort_runners.items():
        name = f"onnx-{precision}"
        if isinstance(runner, str):
            backends.append(Backend(name, precision, skipped=runner))
        else:
            backends.append(loop_backend(name, runner.make_step, precision, steps, start_id, eos_id,
                                         exact=precision == "fp32", notes="OrtT5.make_step, I/O binding"))
    try:
        if hf_dir is None:
            raise ValueError("no Hugging Face directory to convert")
        ct2_dir, vocab = convert_ctranslate2(hf_dir, work_dir / "ctranslate2")
        for compute_type in ("float32", "int8"):
            backends.append(ctranslate2_backend(ct2_dir, vocab, compute_type, steps))
    except Exception as e:  # any converter or loader failure becomes the recorded reason
        reason = f"{CT2_FAIL_HINT}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        backends += [Backend("ctranslate2-fp32", "fp32", skipped=reason),
                     Backend("ctranslate2-int8", "int8", skipped=reason)]
    def fp16() -> Backend:
        import copy

        half = copy.deepcopy(model).half().cuda().eval()
        return loop_backend("eager-fp16-cuda", eager_step_factory(half), "fp16", steps, start_id, eos_id,
                            exact=False, device="cuda")

    return backends + cuda_backends(fp16)


# ---------------------------------------------------------------------------------------------
# Price


def price_batch(input_ids: np.ndarray, attention_mask: np.ndarray, cfg) -> dict:
    """:meth:`PriceRegressor.feeds` of text rows without pictures; a model with the neighbour feature gets
    fixed neighbour features (the mean training price, similarity 0.8): retrieval is W6's; one with the wide
    branch the mean training log price as its wide feature (the graph's cost does not depend on its value)."""
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if cfg.images:
        size = cfg.image["size"]
        batch |= {"image_mask": np.zeros((len(input_ids), 1), dtype=bool),
                  "pixel_values": np.zeros((len(input_ids), 3, size, size), dtype=np.float32)}
    if cfg.neighbours:
        batch["neighbour_features"] = np.tile(np.float32([cfg.target_mean, 0.8]), (len(input_ids), 1))
    if cfg.wide:
        batch["wide_features"] = np.full((len(input_ids), 1), cfg.target_mean, np.float32)
    return batch


def price_backends(regressor, ort_runners: dict) -> list[Backend]:
    """The price column: eager FP32, ONNX Runtime FP32/INT8, CUDA."""
    from shelfml.price.model import eager_runner

    model, cfg = regressor.model, regressor.cfg
    run_eager = eager_runner(model)

    def eager(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return run_eager(price_batch(ids, mask, cfg))

    backends = [Backend("eager", "fp32", run=eager, notes="PriceModel.forward, text only")]
    for precision, runner in ort_runners.items():
        name = f"onnx-{precision}"
        if isinstance(runner, str):
            backends.append(Backend(name, precision, skipped=runner))
            continue
        backends.append(Backend(name, precision, exact=precision == "fp32", notes="OrtPrice",
                                run=lambda ids, mask, r=runner: r(price_batch(ids, mask, cfg))))
    return backends + cuda_backends(None)


@dataclass
class ModelUnderTest:
    """One model of the matrix with its backends and what it is."""

    key: str
    task: str
    description: str
    backends: list[Backend]
    torch_model: torch.nn.Module
    vocab_size: int
    special: dict = field(default_factory=dict)  # start/eos ids (tagger), cls/sep ids (price)
    info: dict = field(default_factory=dict)
