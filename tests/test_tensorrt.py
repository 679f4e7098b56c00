"""model_repository/engines.py and export/tensorrt_check.py: profiles, engine key, the build/reuse/rebuild/refuse decision, engine files on disk,
FP32 patterns against real T5 node names, and the static ONNX checks. TensorRT itself is not installed
here: the file logic runs against a stand-in backend, and the refusal without TensorRT is tested for real."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from shelfml.checkpoint import sha256_file
from shelfml.cli import main as shelfml_main
from shelfml.contract import ShapeRanges
from shelfml.export.tensorrt_check import check_onnx_for_tensorrt
from shelfml.model_repository import engines as trt_mod
from shelfml.model_repository.engines import (Action, BuildSettings, BuiltEngine, DeviceInfo, EngineError,
                                              EngineRefused, PlanState, TensorRTUnavailable, decide, engine_key,
                                              ensure_engine, ensure_repository_engines, import_tensorrt, key_digest,
                                              load_leaf, matching_names, parse_nvidia_smi, profile_shapes)
from shelfml.price.contract import price_ranges, price_spec
from shelfml.tagger.contract import PAST_SEQ, T5_KEEP_FP32, t5_decoder_spec, t5_encoder_spec, tagger_ranges

H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", "10.5.0")


# ---------------------------------------------------------------------------------------------
# Tiny real graphs

class TinyPrice(nn.Module):
    """ids + mask -> price: embedding, masked mean, linear (the price contract's names)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 1)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)


def write_leaf(version_dir: Path, spec, ranges: ShapeRanges, keep_fp32=None) -> Path:
    graph = {"spec": spec.to_dict(), "shape_ranges": ranges.to_dict()}
    if keep_fp32 is not None:
        graph["precision"] = {"keep_fp32": list(keep_fp32)}
    (version_dir / "graph.json").write_text(json.dumps(graph))
    return version_dir


def export(module: nn.Module, spec, example, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(out), input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(), opset_version=17,
                          dynamo=False)
    return out


@pytest.fixture(scope="module")
def price_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 5))
    return export(TinyPrice(), price_spec(False), (ids, torch.ones_like(ids)),
                  tmp_path_factory.mktemp("price") / "model.onnx")


@pytest.fixture
def price_repo(tmp_path, price_onnx) -> Path:
    """REPO/price_regressor/1/{model.onnx, graph.json} + a python model folder without graph.json."""
    version = tmp_path / "repo" / "price_regressor" / "1"
    version.mkdir(parents=True)
    shutil.copy(price_onnx, version / "model.onnx")
    write_leaf(version, price_spec(False), price_ranges(16, max_batch=4))
    (tmp_path / "repo" / "price" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "price" / "1" / "model.py").write_text("# python model: no engine\n")
    return tmp_path / "repo"


class HFEncoder(nn.Module):
    """The Hugging Face T5 encoder stack as is, keyword arguments in, hidden states out."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.fixture(scope="module")
def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    from shelfml.tagger.model import MODEL_SHAPES

    torch.manual_seed(0)
    config = T5Config(vocab_size=120, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, **MODEL_SHAPES["tiny"])
    return T5ForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def t5_graphs(tmp_path_factory, tiny_t5) -> dict[str, Path]:
    """The HF encoder exported alone, and the project's own encoder + decoder-step graphs (export/onnx.py)."""
    from shelfml.tagger.onnx import export_t5

    out = tmp_path_factory.mktemp("t5")
    ids = torch.randint(2, 120, (2, 7))
    spec = replace(t5_encoder_spec(tiny_t5.config), outputs=t5_encoder_spec(tiny_t5.config).outputs[:1])
    graphs = {"hf_encoder": export(HFEncoder(tiny_t5.get_encoder()), spec, (ids, torch.ones_like(ids)),
                                   out / "hf" / "encoder.onnx")}
    (out / "shelfml").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specs = export_t5(tiny_t5, out / "shelfml")
    graphs.update({f"shelfml_{role}": out / "shelfml" / s.file for role, s in specs.items()})
    return graphs


# ---------------------------------------------------------------------------------------------
# Profiles

def _t5_config():
    from transformers import T5Config

    return T5Config(vocab_size=120, d_model=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16)


def _dec_spec():
    return t5_decoder_spec(_t5_config())


@pytest.mark.parametrize("spec_fn, ranges, tensor, expected", [
    (lambda: price_spec(False), price_ranges(256, 64), "input_ids", ((1, 1), (32, 128), (64, 256))),
    (lambda: t5_encoder_spec(_t5_config()), tagger_ranges(96, 32), "attention_mask",
     ((1, 1), (8, 64), (64, 96))),
    (_dec_spec, tagger_ranges(96, 32), "input_ids", ((1, 1), (8, 1), (64, 32))),  # up to a forced run of 32
    (_dec_spec, tagger_ranges(96, 32), "past_key_values.1.decoder.value",
     ((1, 4, 0, 16), (8, 4, 16, 16), (64, 4, 32, 16))),  # an empty past at min
    (_dec_spec, tagger_ranges(96, 32), "past_key_values.0.encoder.key", ((1, 4, 1, 16), (8, 4, 64, 16), (64, 4, 96, 16))),
], ids=["price-ids", "encoder-mask", "decoder-token", "decoder-self-past-min-0", "decoder-cross-kv"])
def test_profile_shapes(spec_fn, ranges, tensor, expected):
    profile = profile_shapes(spec_fn(), ranges)
    assert profile[tensor] == expected
    assert set(profile) == set(spec_fn().input_names)  # inputs only: outputs get no profile


def test_profile_needs_every_axis():
    ranges = ShapeRanges({k: v for k, v in tagger_ranges(96, 32).ranges.items() if k != PAST_SEQ})
    with pytest.raises(EngineError, match=r"no \(min, opt, max\) for axes \['past_decoder_sequence'\]"):
        profile_shapes(_dec_spec(), ranges)


# ---------------------------------------------------------------------------------------------
# Engine key

def _key(device=H100, onnx_sha="a" * 64, profile=None, keep=T5_KEEP_FP32, settings=BuildSettings()):
    return engine_key(device, onnx_sha, profile or profile_shapes(price_spec(False), price_ranges(64)), keep, settings)


@pytest.mark.parametrize("changed", [
    dict(device=replace(H100, gpu_name="NVIDIA A100-SXM4-80GB")),
    dict(device=replace(H100, compute_capability="8.0")),
    dict(device=replace(H100, tensorrt_version="10.6.0")),
    dict(onnx_sha="b" * 64),
    dict(profile=profile_shapes(price_spec(False), price_ranges(128))),
    dict(keep=()),
    dict(settings=BuildSettings(fp16=False)),
    dict(settings=BuildSettings(workspace_gib=8)),
], ids=["gpu-name", "compute-capability", "tensorrt-version", "onnx-bytes", "profile", "keep-fp32", "fp16",
        "workspace"])
def test_key_changes_with(changed):
    assert key_digest(_key()) == key_digest(_key())
    assert key_digest(_key(**changed)) != key_digest(_key())


def test_key_follows_onnx_bytes(price_onnx, tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copy(price_onnx, copy)
    same = sha256_file(copy)
    model = onnx.load(str(copy))
    model.graph.initializer[0].raw_data = np.ones_like(onnx.numpy_helper.to_array(model.graph.initializer[0])).tobytes()
    onnx.save(model, str(copy))
    assert same == sha256_file(price_onnx) != sha256_file(copy)


# ---------------------------------------------------------------------------------------------
# The decision (pure)

def _on_disk(key, plan_sha="p" * 64, **changes) -> PlanState:
    return PlanState(plan_sha256=plan_sha, sidecar={"key": key, "plan_sha256": plan_sha}, **changes)


KEY = _key()
DECISIONS = [
    ("no-engine", KEY, PlanState(), None, Action.BUILD, r"no engine yet"),
    ("match", KEY, _on_disk(KEY), None, Action.REUSE, r"engine key matches"),
    ("other-gpu", KEY, _on_disk(_key(device=replace(H100, gpu_name="NVIDIA L4"))), None, Action.REBUILD,
     r"^GPU: built for 'NVIDIA L4', need 'NVIDIA H100"),
    ("other-compute-capability", KEY, _on_disk(_key(device=replace(H100, compute_capability="8.9"))), None,
     Action.REBUILD, r"compute capability: built for '8.9', need '9.0'"),
    ("other-tensorrt", KEY, _on_disk(_key(device=replace(H100, tensorrt_version="8.6.1"))), None, Action.REBUILD,
     r"TensorRT version: built for '8.6.1', need '10.5.0'"),
    ("onnx-changed", KEY, _on_disk(_key(onnx_sha="0" * 64)), None, Action.REBUILD, r"ONNX file \(sha256\)"),
    ("profile-changed", KEY, _on_disk(_key(profile=profile_shapes(price_spec(False), price_ranges(32)))), None,
     Action.REBUILD, r"optimisation profile"),
    ("precision-changed", KEY, _on_disk(_key(keep=())), None, Action.REBUILD, r"precision settings"),
    ("two-changes", KEY, _on_disk(_key(device=DeviceInfo("NVIDIA L4", "8.9", "10.5.0"))), None, Action.REBUILD,
     r"GPU: .*; compute capability: "),
    ("corrupt-plan", KEY, PlanState(plan_sha256="q" * 64, sidecar={"key": KEY, "plan_sha256": "p" * 64}), None,
     Action.REBUILD, r"not the one recorded at build time .*corrupt"),
    ("no-sidecar", KEY, PlanState(plan_sha256="p" * 64, sidecar_error="model.plan.json is missing"), None,
     Action.REBUILD, r"build record model.plan.json is missing"),
    ("does-not-deserialise", KEY, _on_disk(KEY, load_error="magic tag mismatch"), None, Action.REBUILD,
     r"does not deserialise: magic tag mismatch"),
    ("tensorrt-missing", None, _on_disk(KEY), "TensorRT engines need the `tensorrt` Python package", Action.REFUSE,
     r"tensorrt"),
    ("no-gpu", KEY, PlanState(), "no CUDA GPU visible", Action.REFUSE, r"no CUDA GPU"),
]


@pytest.mark.parametrize("expected, on_disk, unavailable, action, reason", [d[1:] for d in DECISIONS],
                         ids=[d[0] for d in DECISIONS])
def test_decide(expected, on_disk, unavailable, action, reason):
    decision = decide(expected, on_disk, unavailable)
    assert decision.action is action
    assert decision.reason and re.search(reason, decision.reason), decision.reason


# ---------------------------------------------------------------------------------------------
# TensorRT absent: a clear error, and refusal without writing an engine

def test_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed
    with pytest.raises(TensorRTUnavailable, match=r"install the gpu extra .*shelfml\[gpu\]"):
        import_tensorrt()


def test_repository_refused_without_tensorrt(monkeypatch, price_repo, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineRefused, match=r"refused to prepare engines for price_regressor: .*gpu extra"):
        ensure_repository_engines(price_repo, tmp_path / "cache")
    with pytest.raises(EngineRefused, match=r"price_regressor: refuse: .*gpu extra"):
        ensure_engine(price_repo / "price_regressor" / "1", tmp_path / "cache")
    assert not list(price_repo.rglob("model.plan*")) and not (tmp_path / "cache").exists()


def test_cli_refuses_without_tensorrt(monkeypatch, price_repo, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert shelfml_main(["engines", str(price_repo), "--cache", str(tmp_path / "cache")]) == 2
    assert "gpu extra" in capsys.readouterr().err


def test_cli_nothing_to_build(tmp_path, capsys):
    (tmp_path / "repo" / "tagger" / "1").mkdir(parents=True)
    assert shelfml_main(["engines", str(tmp_path / "repo"), "--cache", str(tmp_path / "cache")]) == 0
    assert "nothing to build" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# ensure_engine's files, against a stand-in for TensorRT (the plan is bytes; "deserialising" checks a prefix)

class FakeBackend:
    def __init__(self, device=H100, fail: str | None = None) -> None:
        self._device, self.fail, self.builds, self.timing_caches = device, fail, 0, []

    def device(self) -> DeviceInfo:
        return self._device

    def load_error(self, plan: bytes, spec) -> str | None:
        return None if plan.startswith(b"PLAN:") else "not an engine"

    def build(self, leaf, settings, timing_cache: Path) -> BuiltEngine:
        if self.fail:
            raise EngineError(self.fail)
        self.builds += 1
        self.timing_caches.append(timing_cache)
        return BuiltEngine(f"PLAN:{self._device.gpu_name}:{self.builds}".encode(), ("/head/MatMul",))


def test_ensure_engine_lifecycle(price_repo, tmp_path):
    version, cache = price_repo / "price_regressor" / "1", tmp_path / "cache"
    plan, sidecar = version / "model.plan", version / "model.plan.json"
    backend = FakeBackend()

    first = ensure_engine(version, cache, backend)
    assert (first["action"], first["reason"], backend.builds) == ("build", "no engine yet", 1)
    record = json.loads(sidecar.read_text())
    assert record["key"]["gpu_name"] == H100.gpu_name and record["fp32_layers"] == ["/head/MatMul"]
    assert (cache / "price_regressor" / first["digest"] / "model.plan").read_bytes() == plan.read_bytes()
    assert backend.timing_caches[0].parent == cache / "timing" and "H100" in backend.timing_caches[0].name

    assert ensure_engine(version, cache, backend)["action"] == "reuse" and backend.builds == 1

    plan.write_bytes(b"garbage")  # corrupt: the sha256 no longer matches the record
    again = ensure_engine(version, cache, backend)
    assert again["action"] == "reuse" and "corrupt" in again["reason"] and "cached engine" in again["reason"]
    assert plan.read_bytes().startswith(b"PLAN:") and backend.builds == 1

    plan.unlink()  # a fresh repository copy on the same GPU: the cache serves it
    assert ensure_engine(version, cache, backend)["action"] == "reuse" and backend.builds == 1

    l4 = FakeBackend(DeviceInfo("NVIDIA L4", "8.9", "10.5.0"))
    moved = ensure_engine(version, cache, l4)
    assert moved["action"] == "rebuild" and moved["reason"].startswith("GPU: built for 'NVIDIA H100")
    assert plan.read_bytes() == b"PLAN:NVIDIA L4:1" and len(list((cache / "price_regressor").iterdir())) == 2

    sidecar.unlink()  # a plan without its record is never trusted
    assert ensure_engine(version, cache, l4)["reason"].startswith("the engine's build record model.plan.json")


def test_plan_that_does_not_deserialise_is_rebuilt(price_repo, tmp_path):
    version, cache, backend = price_repo / "price_regressor" / "1", tmp_path / "cache", FakeBackend()
    ensure_engine(version, cache, backend)
    record = json.loads((version / "model.plan.json").read_text())
    bad = b"NOT-A-PLAN"  # recorded sha matches, but the runtime rejects it
    (version / "model.plan").write_bytes(bad)
    record["plan_sha256"] = hashlib.sha256(bad).hexdigest()
    (version / "model.plan.json").write_text(json.dumps(record))
    shutil.rmtree(cache)
    out = ensure_engine(version, cache, backend)
    assert (out["action"], backend.builds) == ("rebuild", 2) and "does not deserialise: not an engine" in out["reason"]


def test_failed_rebuild_leaves_no_stale_engine(price_repo, tmp_path):
    version, cache = price_repo / "price_regressor" / "1", tmp_path / "cache"
    ensure_engine(version, cache, FakeBackend())
    with pytest.raises(EngineError, match="parser failed"):
        ensure_engine(version, cache, FakeBackend(DeviceInfo("NVIDIA L4", "8.9", "10.5.0"), fail="parser failed"))
    assert not (version / "model.plan").exists() and not (version / "model.plan.json").exists()


def test_repository_skips_folders_without_graph_json(price_repo, tmp_path):
    rows = ensure_repository_engines(price_repo, tmp_path / "cache", FakeBackend())
    assert [(r["model"], r["action"]) for r in rows] == [("price_regressor", "build")]
    assert not (price_repo / "price" / "1" / "model.plan").exists()


@pytest.mark.parametrize("graph, match", [
    (None, r"graph.json: not found"),
    ("{not json", r"graph.json: expected \{'spec'"),
    ({"spec": {"name": "x"}}, r"graph.json: expected \{'spec'.*KeyError"),
    ({"spec": price_spec(False).to_dict(), "shape_ranges": {"batch": [4, 2, 1]}}, r"need 0 <= min <= opt <= max"),
    ({"spec": price_spec(False).to_dict(), "shape_ranges": price_ranges(16).to_dict(),
      "precision": {"keep_fp32": ["(unclosed"]}}, r"keep_fp32 pattern '\(unclosed' is not a regex"),
], ids=["missing", "not-json", "no-spec-keys", "bad-range", "bad-regex"])
def test_load_leaf_errors(tmp_path, price_onnx, graph, match):
    shutil.copy(price_onnx, tmp_path / "model.onnx")
    if graph is not None:
        (tmp_path / "graph.json").write_text(graph if isinstance(graph, str) else json.dumps(graph))
    with pytest.raises(EngineError, match=match):
        load_leaf(tmp_path)


def test_load_leaf_defaults_and_missing_onnx(tmp_path):
    write_leaf(tmp_path, price_spec(False), price_ranges(16))
    with pytest.raises(EngineError, match=r"model.onnx: not found \(graph.json describes 'price_regressor'\)"):
        load_leaf(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    assert load_leaf(tmp_path).keep_fp32 == trt_mod.DEFAULT_KEEP_FP32["price_regressor"]


# ---------------------------------------------------------------------------------------------
# GPU detection

@pytest.mark.parametrize("text, visible, expected", [
    ("0, GPU-aaa, NVIDIA H100 80GB HBM3, 9.0\n", None, ("NVIDIA H100 80GB HBM3", "9.0")),
    ("0, GPU-aaa, NVIDIA L4, 8.9\n1, GPU-bbb, NVIDIA H100 80GB HBM3, 9.0\n", "1", ("NVIDIA H100 80GB HBM3", "9.0")),
    ("0, GPU-aaa, NVIDIA L4, 8.9\n1, GPU-bbb, NVIDIA H100 80GB HBM3, 9.0\n", "GPU-bbb", ("NVIDIA H100 80GB HBM3", "9.0")),
], ids=["one-gpu", "visible-index", "visible-uuid"])
def test_parse_nvidia_smi(text, visible, expected):
    assert parse_nvidia_smi(text, visible) == expected


@pytest.mark.parametrize("text, visible, match", [
    ("", None, r"no GPU listed by nvidia-smi"),
    ("0, GPU-aaa, NVIDIA L4, 8.9\n", "3", r"CUDA_VISIBLE_DEVICES='3' names no GPU"),
], ids=["none", "bad-visible"])
def test_parse_nvidia_smi_errors(text, visible, match):
    with pytest.raises(TensorRTUnavailable, match=match):
        parse_nvidia_smi(text, visible)


# ---------------------------------------------------------------------------------------------
# keep_fp32 patterns against real T5 node names

@pytest.mark.parametrize("graph", ["hf_encoder", "shelfml_encoder", "shelfml_decoder"])
def test_t5_keep_fp32_patterns(t5_graphs, graph):
    nodes = onnx.load(str(t5_graphs[graph])).graph.node
    names = [n.name for n in nodes]
    kept = set(matching_names(names, T5_KEEP_FP32))
    by_op = {op: {n.name for n in nodes if n.op_type == op} for op in ("Softmax", "Pow", "ReduceMean", "Sqrt")}
    assert by_op["Softmax"] and by_op["Softmax"] <= kept  # every attention softmax
    norm_ops = {n.name for n in nodes if "layer_norm" in n.name and n.op_type in ("Pow", "ReduceMean", "Sqrt", "Div")}
    assert norm_ops and norm_ops <= kept  # the pow-mean-rsqrt of every T5LayerNorm
    wo = {n.name for n in nodes if n.op_type == "MatMul" and "/wo/" in n.name}
    assert wo and wo <= kept  # FFN output projections
    others = {n.name for n in nodes if n.op_type == "MatMul" and "/wo/" not in n.name}
    assert others and not (others & kept)  # q/k/v/o, wi and the LM head stay FP16
    assert len(kept) < len(names) / 2


# ---------------------------------------------------------------------------------------------
# Static checks

def test_check_passes_on_price_graph(price_repo):
    report = check_onnx_for_tensorrt(price_repo / "price_regressor" / "1" / "model.onnx")
    assert report["ok"], report["errors"]
    assert report["checker"] == "ok" and report["opset"] == 17 and not report["unsupported_ops"]
    assert report["constant_folding"]["tool"] in ("polygraphy", "onnxruntime (ORT_ENABLE_BASIC)")
    assert report["constant_folding"]["foldable_nodes"] >= 0
    assert [r["shape"] for r in report["parity"]] == ["min", "opt", "max"]
    assert report["parity"][2]["inputs"]["input_ids"] == [4, 16] and all(r["ok"] for r in report["parity"])


def test_check_t5_decoder_with_empty_past(t5_graphs, tiny_t5, tmp_path):
    version = tmp_path / "tagger_decoder" / "1"
    version.mkdir(parents=True)
    shutil.copy(t5_graphs["shelfml_decoder"], version / "model.onnx")
    write_leaf(version, t5_decoder_spec(tiny_t5.config), tagger_ranges(12, 6, max_batch=2), T5_KEEP_FP32)
    report = check_onnx_for_tensorrt(version / "model.onnx")
    assert report["ok"], report["errors"]
    assert report["parity"][0]["inputs"]["past_key_values.0.decoder.key"] == [1, 4, 0, 16]  # min: empty past
    assert report["constant_folding"]["foldable_nodes"] > 0  # the exporter leaves shape arithmetic to fold


def test_check_without_graph_json_skips_parity(price_onnx):
    report = check_onnx_for_tensorrt(price_onnx)
    assert report["ok"] and report["parity"] is None


def test_check_falls_back_to_onnxruntime_folding(price_repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)
    report = check_onnx_for_tensorrt(price_repo / "price_regressor" / "1" / "model.onnx")
    assert report["ok"], report["errors"]
    assert report["constant_folding"]["tool"] == "onnxruntime (ORT_ENABLE_BASIC)"


def _tiny_model(op: str, domain: str = "") -> onnx.ModelProto:
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x"], ["y"], domain=domain, name=f"/{op}")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op, domain, match", [
    ("Unique", "", r"ops the TensorRT ONNX parser does not support: \{'Unique': 1\}"),
    ("FastGelu", "com.microsoft", r"not support: \{'com.microsoft::FastGelu': 1\}"),
], ids=["default-domain", "custom-domain"])
def test_check_flags_unsupported_ops(tmp_path, op, domain, match):
    path = tmp_path / "model.onnx"
    onnx.save(_tiny_model(op, domain), str(path))
    report = check_onnx_for_tensorrt(path)
    assert not report["ok"]
    assert any(re.search(match, e) for e in report["errors"]), report["errors"]


@pytest.mark.parametrize("content, match", [
    (b"\x08\x07garbage that is not protobuf" * 3, r"model.onnx: not a readable ONNX model"),
    (None, r"model.onnx: not a readable ONNX model \(FileNotFoundError"),
], ids=["corrupt", "missing"])
def test_check_reports_unreadable_file(tmp_path, content, match):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    report = check_onnx_for_tensorrt(path)
    assert not report["ok"] and re.search(match, report["errors"][0]), report["errors"]


def test_check_reports_checker_failure(tmp_path):
    model = _tiny_model("Relu")
    model.graph.node[0].input[0] = "nowhere"  # an input no one produces
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    report = check_onnx_for_tensorrt(path)
    assert not report["ok"] and report["checker"] != "ok"
    assert "onnx.checker (full_check) failed" in report["errors"][0]


def test_cli_check(price_repo, tmp_path, capsys):
    assert shelfml_main(["engines", "--check", str(price_repo / "price_regressor" / "1" / "model.onnx")]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    assert shelfml_main(["engines", "--check", str(tmp_path / "bad.onnx")]) == 2
