"""shelfml bench: statistics, GFLOP counting, the agreement check (and that it fails), perf_analyzer's input
file, and quick mode end to end on the tiny checkpoints against the real server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shelfml.benchmarks import agreement
from shelfml.benchmarks.backends import Backend, loop_backend
from shelfml.benchmarks.timing import interleaved, summarize

STATS_CASES = [
    # samples (s), items per call, expected subset
    ([i / 1e3 for i in range(1, 101)], 1, {"p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": 99.01, "mean_ms": 50.5,
                                           "min_ms": 1.0, "n": 100}),
    ([0.010] * 7, 32, {"p50_ms": 10.0, "p99_ms": 10.0, "std_ms": 0.0, "throughput_items_s": 3200.0}),
    ([0.001, 0.003], 4, {"p50_ms": 2.0, "mean_ms": 2.0, "throughput_items_s": 2000.0}),
]


@pytest.mark.parametrize("samples,items,expected", STATS_CASES, ids=["1-to-100-ms", "constant-b32", "two-samples"])
def test_summarize_known_inputs(samples, items, expected):
    stats = summarize(samples, items)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value), key


def test_summarize_refuses_no_samples():
    with pytest.raises(AssertionError, match="no samples"):
        summarize([])


def test_interleaved_rotates_and_warms_up():
    calls = []
    samples = interleaved({n: (lambda n=n: calls.append(n)) for n in "abc"}, reps=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {n: len(s) for n, s in samples.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.fixture(scope="module")
def tiny_tagger(tiny_checkpoint):
    from shelfml.tagger import Tagger

    return Tagger.load(tiny_checkpoint)


def test_gflops_positive_and_scale_with_steps(tiny_tagger):
    from shelfml.benchmarks.flops import t5_gflops
    from shelfml.benchmarks.workloads import token_batch

    ids, mask = token_batch(len(tiny_tagger.tokenizer), 2, 64, 3, tiny_tagger.tokenizer.eos_token_id)
    one, four = (t5_gflops(tiny_tagger.model, ids, mask, steps) for steps in (1, 4))
    assert one["encoder"] > 0 and one["decoder"] > 0
    assert four["encoder"] == pytest.approx(one["encoder"])
    # the first step also projects the encoder output into every layer's cross-attention keys/values (cached)
    later = four["decoder_per_step"][1:]
    assert all(f > 0 for f in later) and max(later) < 1.2 * min(later)
    assert four["total"] - one["total"] == pytest.approx(sum(later))
    assert four["total"] > one["total"]
    assert four["per_request"] == pytest.approx(four["total"] / 2)


def _wrong_step_factory(make_step):
    """A backend bug: the step returns logits shifted by one vocabulary entry."""
    def factory(ids, mask):
        step = make_step(ids, mask)
        return lambda tokens: np.roll(step(tokens), 1, axis=-1)
    return factory


@pytest.mark.parametrize("exact,raises", [(True, True), (False, False)], ids=["required-fails", "int8-reported"])
def test_agreement_fails_when_a_backend_disagrees(tiny_tagger, exact, raises):
    from shelfml.benchmarks.workloads import token_batch
    from shelfml.tagger.model import eager_step_factory

    tok = tiny_tagger.tokenizer
    ids, mask = token_batch(len(tok), 4, 64, 3, tok.eos_token_id)
    eager = eager_step_factory(tiny_tagger.model)
    backends = [loop_backend("eager-loop", eager, "fp32", 16, tok.pad_token_id, tok.eos_token_id),
                loop_backend("same-loop", eager, "fp32", 16, tok.pad_token_id, tok.eos_token_id),
                loop_backend("wrong-step", _wrong_step_factory(eager), "fp32", 16, tok.pad_token_id, tok.eos_token_id,
                             exact=exact)]
    outputs = agreement.run_outputs(backends, ids, mask)
    assert outputs["eager-loop"].shape == (4, 16)
    if raises:
        with pytest.raises(agreement.AgreementError, match=r"W1: .*wrong-step"):
            agreement.check(agreement.compare_tokens, backends, outputs, "eager-loop", "W1")
    else:
        report = agreement.check(agreement.compare_tokens, backends, outputs, "eager-loop", "W1")["backends"]
        assert report["same-loop"]["identical"] and report["same-loop"]["required"]
        assert not report["wrong-step"]["agrees"] and not report["wrong-step"]["required"]
        assert report["wrong-step"]["token_agreement"] < 1


@pytest.mark.parametrize("delta,raises", [(1e-5, False), (0.5, True)], ids=["within-tolerance", "price-off"])
def test_price_agreement_tolerance(delta, raises):
    ref = np.array([10.0, 250.0, 3000.0])
    backends = [Backend("eager", "fp32", run=lambda i, m: ref), Backend("onnx-fp32", "fp32", run=lambda i, m: ref)]
    outputs = {"eager": ref, "onnx-fp32": ref * (1 + delta)}
    if raises:
        with pytest.raises(agreement.AgreementError, match="onnx-fp32"):
            agreement.check(agreement.compare_prices, backends, outputs, "eager", "W3")
    else:
        assert agreement.check(agreement.compare_prices, backends, outputs, "eager", "W3")["backends"]["onnx-fp32"]["agrees"]


def test_backend_needs_run_or_reason():
    with pytest.raises(AssertionError, match="run function or a skip reason"):
        Backend("nothing", "fp32")


def test_perf_analyzer_input_data_and_missing_binary(tmp_path):
    from shelfml.benchmarks.perf_analyzer import PerfAnalyzerUnavailable, find_perf_analyzer, write_input_data

    data = json.loads(write_input_data(tmp_path / "in.json", ["steel bottle 1 l", "shampoo"]).read_text())
    assert data == {"data": [{"text": ["steel bottle 1 l"]}, {"text": ["shampoo"]}]}
    with pytest.raises(PerfAnalyzerUnavailable, match="downloading is off"):
        find_perf_analyzer(cache=tmp_path / "none", download=False)


def test_bench_refuses_a_non_empty_output(tmp_path):
    from shelfml.benchmarks import run_bench

    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already exists"):
        run_bench(tmp_path)


# ---------------------------------------------------------------------------------------------
# Quick mode end to end


@pytest.fixture(scope="module")
def quick_results(served_repository, tmp_path_factory):
    from shelfml.benchmarks import run_bench
    from shelfml.benchmarks.run import Repetitions

    import os

    out = tmp_path_factory.mktemp("bench") / "out"
    s = served_repository
    os.environ["SHELFML_ADMIN_KEY"] = s.server.admin_key  # the statistics API is restricted
    results = run_bench(out, checkpoint=s.tagger_checkpoint, price_checkpoint=s.price_checkpoint, quick=True,
                        exports=s.exports, grpc_url=s.grpc_url, reps=Repetitions.smallest(), reference=False)
    return out, results


def test_quick_json_schema(quick_results):
    out, results = quick_results
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == "shelfml.bench/1" and on_disk["quick"] is True
    for key in ("environment", "workloads", "models", "serving", "goals", "skipped", "seed_figures", "repetitions"):
        assert key in on_disk, key
    env = on_disk["environment"]
    assert env["cpu"] and env["threads"] >= 1 and env["versions"]["torch"] and env["versions"]["onnxruntime"]
    assert set(on_disk["workloads"]) == {"W1", "W2", "W3", "W4"}
    w6 = on_disk["retrieval"]  # W6: FAISS exact and HNSW, recall measured against exact search
    assert set(w6["kinds"]) == {"flat", "hnsw"} and w6["kinds"]["flat"]["recall_at_k"] == 1.0
    assert w6["kinds"]["hnsw"]["latency_ms"]["p50"] > 0 and "W6 retrieval" in (out / "report.md").read_text()
    assert set(on_disk["models"]) == {"tagger-trained", "price-trained"}
    assert {g["id"] for g in on_disk["goals"]} >= {"W1-3x-eager", "W1-ctranslate2", "W2-ctranslate2",
                                                   "W3-2x-eager", "W4-overhead", "W4-scaling"}
    for goal in on_disk["goals"]:
        assert goal["passed"] in (True, False, None) and goal["detail"]


@pytest.mark.parametrize("model,workloads", [("tagger-trained", ("W1", "W2")), ("price-trained", ("W3",))],
                         ids=["tagger", "price"])
def test_every_backend_timed_or_skipped_with_reason(quick_results, model, workloads):
    _, results = quick_results
    m = results["models"][model]
    skipped = {(s["model"], s["backend"]) for s in results["skipped"]}
    for name, backend in m["backends"].items():
        if backend["status"] == "timed":
            for wid in workloads:
                stats = m["results"][wid]["backends"][name]
                assert stats["p50_ms"] > 0 and stats["throughput_items_s"] > 0, (wid, name)
                assert {"p90_ms", "p99_ms", "mean_ms", "speedup_vs_eager", "gflops_per_s"} <= set(stats)
                assert m["agreement"][wid]["backends"][name]["required"] == (backend["agreement"] == "required")
        else:
            assert backend["status"] == "skipped" and backend["reason"], name
            assert (model, name) in skipped
    timed = {n for n, b in m["backends"].items() if b["status"] == "timed"}
    assert {"onnx-fp32", "onnx-int8"} <= timed and ({"eager-generate", "eager-loop"} <= timed or "eager" in timed)


def test_quick_serving_and_constrained(quick_results):
    _, results = quick_results
    serving = results["serving"]
    assert serving["status"] == "timed" and serving["agreement"]["label_agreement"] == 1.0
    assert set(serving["throughput"]) == {"1", "4", "16"}
    assert serving["latency"]["triton-grpc"]["p50_ms"] > 0
    constrained = results["models"]["tagger-trained"]["constrained"]
    assert constrained["agreement"]["onnx-fp32"]["label_agreement"] == 1.0
    assert set(constrained["by_batch"]) == {"1", "32"}
    for batch, by_backend in constrained["overhead"].items():  # where the time goes, jump-forward against none
        for o in by_backend.values():
            assert o["calls_per_batch"] <= o["calls_per_batch_one_per_token"]
            assert 0 < o["constraint_share"] < 1 and o["decoder_ms"] > 0
            parts = ("tokenizer_ms", "encoder_ms", "decoder_ms", "prior_ms", "constraint_ms")
            assert abs(sum(o[k] for k in parts) - o["decode_ms"]) < 1e-6
        if batch == "1":  # one text at a time: its forced runs cost no decoder call of their own
            assert all(o["calls_per_batch"] < o["tokens_per_label"] for o in by_backend.values())
    goals = {g["id"] for g in results["goals"] if g["model"] == "tagger-trained"}
    assert {"constraint-share", "constrained-b1-ctranslate2"} <= goals
    assert results["models"]["tagger-trained"]["gflops"]["W1"]["per_request"] > 0


def test_quick_report_and_plots_exist(quick_results):
    out, results = quick_results
    report = (out / "report.md").read_text()
    for heading in ("## Goals", "## Seed figures beside ours", "## Results", "## W4: serving", "## Profile",
                    "## Skipped backends"):
        assert heading in report
    assert results["command"] in (out / "README-results.md").read_text()
    for name in results["files"]["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_gpu_check_dry_run_on_cpu(tiny_checkpoint, tmp_path):
    """The prepared CUDA script runs its checks on the CPU too (its exit code says the labels agreed)."""
    from shelfml.benchmarks.gpu_check import main

    assert main([str(tiny_checkpoint), "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["multi_token_max_logit_diff"] < 1e-3
    assert out["overhead"]["1"]["calls_per_batch"] < out["overhead"]["1"]["calls_per_batch_one_per_token"]
