"""The reliability suite's short form (CI) against the real server on the tiny models' repository: every
check must hold (the full run, with the default pipeline's repository, is the README table)."""

from __future__ import annotations

import json

from shelfml.benchmarks.reliability import Plan, run_reliability


def test_reliability_suite_short_form(served_repository, tmp_path):
    """On a repository built with load shedding (``--queue-limit``), so overload is shed at once."""
    from shelfml.model_repository.build import QueuePolicy, build_repository

    # FP32 graphs: INT8's dynamic quantisation scales activations per batch, so a text alone and the same text in a
    # batch of 12 can decode differently on a near tie (documented; tests/test_serving.py covers INT8), and the load
    # section compares every answer with the batch's
    build_repository(tmp_path / "repo", **served_repository.exports, queue=QueuePolicy(), cpu_precision="fp32")
    results = run_reliability(tmp_path / "repo", tmp_path / "rel", Plan.quick())
    failed = {k: v for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False}
    assert results["ok"], json.dumps(failed, indent=1)[:4000]
    bad = results["bad_input"]["cases"]
    assert all(c["clear"] and c["next_good_identical"] for c in bad.values()) and len(bad) >= 20
    assert results["overload"]["outcomes"].get("shed", 0) > 0
    assert results["faults"]["sigkill_mid_batch"]["every_id_once_in_order"]
    assert "does not match its sha256" in results["corrupt"]["verify"]
    assert (tmp_path / "rel" / "reliability.md").read_text().count("| held |") == 7
