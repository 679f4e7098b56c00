"""Before anything is timed, every backend runs the workload's inputs once and its outputs are compared with
the reference backend's: identical greedy tokens for the tagger, prices within a tolerance for the regressor.
INT8 (and FP16) backends are compared and the agreement reported, not required."""

from __future__ import annotations

from typing import Callable

import numpy as np

from shelfml.benchmarks.backends import Backend

PRICE_RTOL, PRICE_ATOL = 1e-3, 1e-2  # FP32 ONNX Runtime against eager PyTorch, on prices


class AgreementError(AssertionError):
    """A backend whose outputs must equal the reference's does not."""


def compare_tokens(reference: np.ndarray, other: np.ndarray) -> dict:
    if reference.shape != other.shape:
        return {"agrees": False, "identical": False, "token_agreement": 0.0, "sequence_agreement": 0.0,
                "shape": list(other.shape), "expected_shape": list(reference.shape)}
    same = reference == other
    return {"agrees": bool(same.all()), "identical": bool(same.all()), "token_agreement": float(same.mean()),
            "sequence_agreement": float(same.all(axis=1).mean())}


def compare_prices(reference: np.ndarray, other: np.ndarray) -> dict:
    if reference.shape != other.shape:
        return {"agrees": False, "identical": False, "within_tolerance": False, "shape": list(other.shape)}
    diff = np.abs(np.asarray(other, np.float64) - np.asarray(reference, np.float64))
    rel = diff / np.maximum(np.abs(reference), 1e-6)
    ok = bool(np.all(diff <= PRICE_ATOL + PRICE_RTOL * np.abs(reference)))
    return {"agrees": ok, "within_tolerance": ok,
            "max_abs_diff": float(diff.max()), "max_rel_diff": float(rel.max()), "rtol": PRICE_RTOL,
            "atol": PRICE_ATOL}


def check(compare: Callable[[np.ndarray, np.ndarray], dict], backends: list[Backend],
          outputs: dict[str, np.ndarray], reference: str, workload: str) -> dict:
    """Compare every backend's outputs with ``reference``'s by ``compare`` (its "agrees" entry); AgreementError
    naming each required backend that disagrees (and by how much). Returns the per-backend comparison."""
    ref = outputs[reference]
    report, failures = {}, []
    for backend in backends:
        if backend.name not in outputs:
            continue
        result = compare(ref, outputs[backend.name])
        ok = result.pop("agrees")
        report[backend.name] = {"agrees": ok, "required": backend.exact, **result}
        if backend.exact and not ok:
            failures.append(f"{backend.name} ({result})")
    if failures:
        raise AgreementError(f"{workload}: outputs disagree with {reference} before timing: " + "; ".join(failures))
    return {"reference": reference, "backends": report}


def run_outputs(backends: list[Backend], input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """One call of every timed backend on the same inputs (also their first warm-up)."""
    return {b.name: np.asarray(b.run(input_ids, attention_mask)) for b in backends if b.run is not None}
