"""The CUDA parts of the constrained decode, for a machine with a GPU (``python -m shelfml.benchmarks.gpu_check
CHECKPOINT --out DIR``; a few minutes): the eager step on the GPU fed several tokens at once equals one call per
token, the constrained labels on the GPU equal the CPU's (with and without jump-forward), and where the time goes
at batch 1 and 32 (decoder calls on the device, the constraint on the host). Writes ``gpu_check.json``.

ONNX Runtime CUDA and TensorRT are not part of it: neither is installable on the machines this project is
measured on (the README says so)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shelfml.tagger.model import eager_step_factory


def _multi_token_parity(tagger, texts: list[str], device: str) -> float:
    """Largest logit difference between feeding a run of tokens in one call and one call per token."""
    ids, mask = tagger.encode(texts)
    run = np.array([tagger.codec.encode(p.label)[:5] for p in tagger.predict(texts)], np.int64)
    run = np.concatenate([np.full((len(texts), 1), tagger.codec.pad_id, np.int64), run], axis=1)
    make_step = eager_step_factory(tagger.model.to(device))
    single, joint = make_step(ids, mask), make_step(ids, mask)
    last = [single(run[:, i : i + 1]) for i in range(run.shape[1])][-1]
    return float(np.abs(joint(run) - last).max())


def main(argv: list[str] | None = None) -> int:
    from shelfml.benchmarks.profiles import constraint_overhead
    from shelfml.benchmarks.serving import serving_texts
    from shelfml.tagger import Tagger

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same checks as a dry run")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (--device cpu for a dry run)", file=sys.stderr)
        return 2
    texts = serving_texts(args.checkpoint, 64)
    cpu = Tagger.load(args.checkpoint)
    reference = [p.label for p in cpu.predict(texts)]
    gpu = Tagger.load(args.checkpoint, device=args.device)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (dry run)"
    out: dict = {"device": name, "torch": torch.__version__,
                 "multi_token_max_logit_diff": _multi_token_parity(gpu, texts[:8], args.device)}
    for jump in (True, False):
        start = time.perf_counter()
        labels = [p.label for p in gpu.predict(texts, jump_forward=jump)]
        out[f"labels_equal_cpu_jump_{jump}"] = labels == reference
        out[f"seconds_jump_{jump}"] = time.perf_counter() - start
    make_step = eager_step_factory(gpu.model)
    out["overhead"] = {str(b): constraint_overhead(gpu, make_step, texts[:32], b, 3) for b in (1, 32)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(json.dumps(out, indent=2))
    return 0 if out["labels_equal_cpu_jump_True"] and out["labels_equal_cpu_jump_False"] else 1


if __name__ == "__main__":
    sys.exit(main())
