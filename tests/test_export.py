"""Export: ONNX graphs under the contract's names, parity with eager PyTorch (both T5 shapes and the
regressor, with and without pictures), the ORT decode loop, INT8, refusals and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from shelfml.checkpoint import CheckpointError
from shelfml.tagger.contract import past_name, t5_decoder_spec, t5_encoder_spec
from shelfml.exports import EXPORT_MANIFEST, ExportError, read_export, verify_files
from shelfml.export.exporter import (ExportArgs, export_checkpoint,
                                     step_parity)
from shelfml.price.onnx import export_price
from shelfml.tagger.onnx import export_t5
from shelfml.onnxrt import GraphError, load_session
from shelfml.price.runners import OrtPrice
from shelfml.tagger.runners import OrtT5
from shelfml.price import PriceConfig, PriceRegressor
from shelfml.price.model import build_regressor
from shelfml.tagger import Tagger
from shelfml.tagger.model import MODEL_SHAPES, eager_step_factory

LOGIT_ATOL = 1e-4  # fp32 ORT vs eager: measured ~2e-6 (tiny) and ~5e-6 (flan-t5-small shape)


def random_t5(shape: str, vocab: int = 320) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, **MODEL_SHAPES[shape])
    return T5ForConditionalGeneration(config).eval()


def padded_batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab, (3, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module", params=["tiny", "small"], ids=["tiny", "flan-t5-small-shape"])
def t5_export(request, tmp_path_factory):
    model = random_t5(request.param)
    out = tmp_path_factory.mktemp(f"t5-{request.param}")
    specs = export_t5(model, out)
    return model, out, specs


def test_t5_graphs_follow_the_optimum_names_and_pass_the_checker(t5_export):
    model, out, specs = t5_export
    for key, spec in specs.items():
        graph = onnx.load(out / spec.file)
        onnx.checker.check_model(graph, full_check=True)
        assert [i.name for i in graph.graph.input] == spec.input_names
        assert [o.name for o in graph.graph.output] == spec.output_names
    decoder = specs["decoder"]
    layers = model.config.num_decoder_layers
    assert decoder.input_names[:4] == ["input_ids", "encoder_attention_mask", "past_key_values.0.decoder.key",
                                       "past_key_values.0.decoder.value"]
    assert f"past_key_values.{layers - 1}.encoder.value" in decoder.input_names
    assert decoder.output_names[-1] == f"present.{layers - 1}.decoder.value"
    assert specs["encoder"] == t5_encoder_spec(model.config) and decoder == t5_decoder_spec(model.config)


def test_t5_logits_and_16_greedy_tokens_match_eager_on_a_padded_batch(t5_export):
    model, out, specs = t5_export
    runner = OrtT5(load_session(out / "encoder.onnx", specs["encoder"]), load_session(out / "decoder.onnx", specs["decoder"]))
    ids, mask = padded_batch(model.config.vocab_size)
    parity = step_parity(eager_step_factory(model), runner.make_step, ids, mask, steps=16)
    assert parity["padded_batch"] and parity["greedy_steps"] == 16
    assert parity["max_abs_logit_diff"] < LOGIT_ATOL, parity
    assert parity["greedy_tokens_identical"], parity


def test_the_decoder_cache_grows_from_empty(t5_export):
    model, out, specs = t5_export
    session = load_session(out / "decoder.onnx", specs["decoder"])
    cfg = model.config
    ids, mask = padded_batch(cfg.vocab_size)
    cross = OrtT5(load_session(out / "encoder.onnx"), session)
    enc = load_session(out / "encoder.onnx").run(None, {"input_ids": ids, "attention_mask": mask})
    feeds = {"input_ids": np.zeros((3, 1), np.int64), "encoder_attention_mask": mask}
    for name in cross.self_names:
        feeds[name] = np.zeros((3, cfg.num_heads, 0, cfg.d_kv), np.float32)
    for name, value in zip([past_name(n) for n in cross.cross_outputs], enc[1:]):
        feeds[name] = value
    outputs = session.run(None, feeds)
    assert outputs[0].shape == (3, 1, cfg.vocab_size)
    assert all(o.shape == (3, cfg.num_heads, 1, cfg.d_kv) for o in outputs[1:])


def test_several_new_tokens_in_one_call_match_one_call_each_and_eager(t5_export):
    """The decoder graph takes a run of tokens (jump-forward): the logits after the run and the grown cache equal
    feeding the same tokens one call at a time, and the eager model's."""
    model, out, specs = t5_export
    runner = OrtT5(load_session(out / "encoder.onnx", specs["encoder"]), load_session(out / "decoder.onnx", specs["decoder"]))
    ids, mask = padded_batch(model.config.vocab_size)
    run = np.random.default_rng(1).integers(2, model.config.vocab_size, (3, 5)).astype(np.int64)
    run[:, 0] = model.config.decoder_start_token_id
    for make_step in (runner.make_step, eager_step_factory(model)):
        one_by_one, at_once = make_step(ids, mask), make_step(ids, mask)
        singles = [one_by_one(run[:, i : i + 1]) for i in range(run.shape[1])]
        together = [at_once(run[:, :1]), at_once(run[:, 1:4]), at_once(run[:, 4:])]
        assert np.abs(together[1] - singles[3]).max() < LOGIT_ATOL
        assert np.abs(together[2] - singles[4]).max() < LOGIT_ATOL
        nxt = np.argmax(singles[4], axis=-1)[:, None].astype(np.int64)  # the cache after both feeds is the same
        assert np.abs(one_by_one(nxt) - at_once(nxt)).max() < LOGIT_ATOL
    with torch.inference_mode():
        eager = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      decoder_input_ids=torch.from_numpy(run)).logits[:, -1].numpy()
    assert np.abs(runner.make_step(ids, mask)(run) - eager).max() < LOGIT_ATOL


@pytest.mark.parametrize("shape", ["tiny", "small"], ids=["tiny", "flan-t5-small-shape"])
def test_jump_forward_is_token_identical_through_onnx_runtime(shape, tokenizer, small_catalog, tmp_path):
    """Forced runs fed in one call give the tokens of one call per token, through the exported graphs of both
    model shapes (and eager agrees)."""
    from shelfml.constraint import LabelConstraint
    from shelfml.decoding import greedy_decode
    from shelfml.labels import TargetCodec

    model = random_t5(shape, vocab=len(tokenizer))
    specs = export_t5(model, tmp_path)
    runner = OrtT5(*(load_session(tmp_path / s.file, s) for s in specs.values()))
    constraint = LabelConstraint(TargetCodec(tokenizer), small_catalog.taxonomy())
    texts = small_catalog.inputs()[:12]
    from shelfml.text import TextTokenizer

    ids, mask = TextTokenizer.from_transformers(tokenizer).batch(texts, 48)
    decoded = {}
    for name, make_step in (("onnx", runner.make_step), ("eager", eager_step_factory(model))):
        for jump in (True, False):
            preds = greedy_decode(make_step(ids, mask), texts, constraint, 80, jump_forward=jump)
            decoded[name, jump] = [p.token_ids for p in preds]
    assert decoded["onnx", True] == decoded["onnx", False]
    assert decoded["eager", True] == decoded["eager", False] == decoded["onnx", True]


def test_a_one_token_decoder_from_an_older_export_still_decodes(tiny_checkpoint, tmp_path, small_catalog):
    """A decoder graph exported before jump-forward (input_ids [batch, 1]) is fed forced runs token by token."""
    import dataclasses

    from shelfml.contract import TensorSpec
    from shelfml.export.onnx import export_graph
    from shelfml.tagger.onnx import T5DecoderStep

    tagger = Tagger.load(tiny_checkpoint)
    specs = export_t5(tagger.model, tmp_path)
    cfg = tagger.model.config
    old = dataclasses.replace(specs["decoder"], file="decoder-one-token.onnx", inputs=(
        TensorSpec("input_ids", "int64", ("batch", 1)), *specs["decoder"].inputs[1:]))
    ids, mask = padded_batch(cfg.vocab_size)
    cross = OrtT5(load_session(tmp_path / "encoder.onnx"), load_session(tmp_path / "decoder.onnx"))
    enc = load_session(tmp_path / "encoder.onnx").run(None, {"input_ids": ids, "attention_mask": mask})
    past = [torch.zeros(3, cfg.num_heads, 2, cfg.d_kv) for _ in cross.self_names]
    export_graph(T5DecoderStep(tagger.model).eval(), old, (torch.zeros(3, 1, dtype=torch.long), torch.from_numpy(mask),
                                                           *past, *map(torch.from_numpy, enc[1:])),
                 tmp_path / old.file, 17)
    runner = OrtT5(load_session(tmp_path / "encoder.onnx"), load_session(tmp_path / old.file))
    assert runner.one_token and not cross.one_token
    texts = small_catalog.inputs()[:12]
    assert [p.token_ids for p in tagger.predict(texts, make_step=runner.make_step)] == \
        [p.token_ids for p in tagger.predict(texts, make_step=cross.make_step)]


def test_constrained_decoding_through_onnx_runtime_equals_eager(tiny_checkpoint, tmp_path, small_catalog):
    tagger = Tagger.load(tiny_checkpoint)
    specs = export_t5(tagger.model, tmp_path)
    runner = OrtT5(*(load_session(tmp_path / s.file, s) for s in specs.values()))
    texts = small_catalog.inputs()[:40]
    eager = tagger.predict(texts, batch_size=16)
    onnx_preds = tagger.predict(texts, batch_size=16, make_step=runner.make_step)
    assert [p.label for p in onnx_preds] == [p.label for p in eager]
    assert [p.token_ids for p in onnx_preds] == [p.token_ids for p in eager]
    assert np.allclose([p.confidence for p in onnx_preds], [p.confidence for p in eager], atol=1e-4)
    assert all(p.label.path in tagger.taxonomy for p in onnx_preds)
    ranked = [tagger.predict(texts[:12], batch_size=8, make_step=m, top_k=3) for m in (None, runner.make_step)]
    assert np.allclose([p.level_probs for p in ranked[0]], [p.level_probs for p in ranked[1]], atol=1e-4)
    assert [[a for a, _ in p.alternatives] for p in ranked[0]] == [[a for a, _ in p.alternatives] for p in ranked[1]]
    assert np.allclose([[v for _, v in p.alternatives] for p in ranked[0]],
                       [[v for _, v in p.alternatives] for p in ranked[1]], atol=1e-4)


@pytest.mark.parametrize("with_images", [False, True], ids=["text", "text+images"])
def test_price_graph_matches_eager_in_price_space(tiny_encoder, tiny_vision, pictures, tmp_path, with_images):
    torch.manual_seed(0)
    reg = build_regressor(PriceConfig(images=with_images, max_length=32, target_mean=5.0), tiny_encoder,
                          tiny_vision if with_images else None)
    reg.model.eval()
    spec = export_price(reg.model, tmp_path)["model"]
    runner = OrtPrice(load_session(tmp_path / spec.file, spec))
    texts = ["steel water bottle 1 l", "gold plated necklace set with a very long description of the item", "socks"]
    images = [pictures["ok"], pictures["missing"], pictures["corrupt"]] if with_images else None
    eager = reg.predict(texts, images)
    onnx_prices = reg.predict(texts, images, run=runner)
    assert np.allclose(onnx_prices, eager, rtol=1e-4), (onnx_prices, eager)
    if with_images:  # the dense graph's masked rows equal the eager model's skipped rows
        assert spec.input_names == ["input_ids", "attention_mask", "pixel_values", "image_mask"]


# ---------------------------------------------------------------------------------------------
# shelfml export: the whole directory


@pytest.fixture(scope="module")
def tagger_export(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tagger"
    export_checkpoint(tiny_checkpoint, out, ExportArgs(parity_rows=48, int8_max_drop=100.0))
    return out


def test_export_manifest_records_parity_int8_hashes_and_ranges(tagger_export):
    manifest = read_export(tagger_export, task="tagger")
    assert set(manifest["files"]) == {"encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx"}
    fp32 = manifest["parity"]["onnx-fp32"]
    assert fp32["max_abs_logit_diff"] < LOGIT_ATOL and fp32["greedy_tokens_identical"] and fp32["padded_batch"]
    assert fp32["constrained_agreement"] == 1.0 and fp32["item_accuracy_delta_points"] == 0.0
    assert manifest["parity_check"] == {"fp32_within_tolerance": True, "failures": [], "accepted_by_override": False}
    int8 = manifest["parity"]["onnx-int8"]
    assert {"item_accuracy", "item_accuracy_delta_points", "constrained_agreement"} <= set(int8)
    assert manifest["shape_ranges"]["past_decoder_sequence"][0] == 0
    assert manifest["versions"]["onnxruntime"] and manifest["session"]["optimization"] == "all"
    assert (tagger_export / "assets" / "shelfml.json").is_file() and not list((tagger_export / "assets").glob("*.safetensors"))
    verify_files(tagger_export)
    for key in ("encoder", "decoder"):  # static TensorRT readiness, incl. an ORT run at min/opt/max shapes
        check = manifest["tensorrt_check"][key]
        assert check["ok"] and check["checker"] == "ok" and not check["unsupported_ops"], check
        assert len(check["parity"]) == 3


def test_int8_graphs_decode_within_the_taxonomy(tagger_export, small_catalog):
    tagger = Tagger.load(tagger_export / "assets", weights=False)
    assert tagger.model is None
    runner = OrtT5.load(tagger_export, int8=True)
    preds = tagger.predict(small_catalog.inputs()[:20], make_step=runner.make_step)
    assert all(p.label.path in tagger.taxonomy for p in preds)


def test_int8_refusal_leaves_the_previous_export_untouched(tiny_checkpoint, tagger_export, monkeypatch):
    from shelfml.export import exporter

    before = (tagger_export / EXPORT_MANIFEST).read_text()
    monkeypatch.setattr(exporter, "_check_int8", lambda loss, limit, metric, unit: (_ for _ in ()).throw(
        ExportError(f"INT8 is worse on {metric} by 5.00 {unit} (limit {limit:.2f})")))
    with pytest.raises(ExportError, match="INT8 is worse on item accuracy"):
        export_checkpoint(tiny_checkpoint, tagger_export, ExportArgs(parity_rows=8), force=True)
    assert (tagger_export / EXPORT_MANIFEST).read_text() == before
    assert not [p for p in tagger_export.parent.iterdir() if p.name.startswith(".tagger.")]


def test_real_int8_limit_is_enforced(tiny_checkpoint, tmp_path):
    """A limit below any possible loss (negative: INT8 must *gain* accuracy) is refused for real."""
    with pytest.raises(ExportError, match="--int8-max-drop"):
        export_checkpoint(tiny_checkpoint, tmp_path / "out", ExportArgs(parity_rows=16, int8_max_drop=-101.0))
    assert not (tmp_path / "out").exists()


def test_fp32_graphs_outside_the_contract_tolerance_are_refused_unless_overridden(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch):
    """A contract tolerance the graphs cannot meet (atol 1e-12: float32 round-off alone misses it) is refused
    for real, nothing written; --accept-parity-failure exports and records it."""
    import dataclasses

    from shelfml.tagger import export as tagger_export_hooks

    strict = lambda model, out, opset: {k: dataclasses.replace(s, atol=1e-12)  # noqa: E731
                                        for k, s in export_t5(model, out, opset).items()}
    monkeypatch.setattr(tagger_export_hooks, "export_t5", strict)
    with pytest.raises(ExportError, match=r"miss the contract's parity tolerance: max logit difference .* > atol 1e-12"):
        export_checkpoint(tiny_checkpoint, tmp_path / "out", ExportArgs(parity_rows=8, int8=False))
    assert not (tmp_path / "out").exists()
    manifest = export_checkpoint(tiny_checkpoint, tmp_path / "out", ExportArgs(parity_rows=8, int8=False,
                                                                               accept_parity_failure=True))
    check = read_export(tmp_path / "out")["parity_check"]
    assert check["accepted_by_override"] and not check["fp32_within_tolerance"] and check["failures"]
    assert manifest["parity_check"] == check


def test_export_refuses_non_checkpoints_and_existing_output(tmp_path, tiny_checkpoint, tagger_export):
    with pytest.raises(CheckpointError, match="not a shelfml checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--force"):
        export_checkpoint(tiny_checkpoint, tagger_export)


def test_corrupt_or_replaced_graphs_are_refused(tagger_export, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tagger_export, copy)
    (copy / "decoder.onnx").write_bytes(b"\x08\x07 this is not a protobuf graph")
    with pytest.raises(ExportError, match="does not match the sha256"):
        verify_files(copy)
    with pytest.raises(GraphError, match="not a loadable ONNX graph"):
        OrtT5.load(copy)
    shutil.copy(copy / "encoder.onnx", copy / "decoder.onnx")  # a valid graph, but the wrong one
    with pytest.raises(GraphError, match="does not match tagger_decoder"):
        OrtT5.load(copy)


def test_price_export_with_images_reports_price_deltas(image_price_checkpoint, tmp_path):
    manifest = export_checkpoint(image_price_checkpoint, tmp_path / "price", ExportArgs(int8_max_drop=100.0))
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    assert [t["name"] for t in manifest["graphs"]["model"]["inputs"]][2:] == ["pixel_values", "image_mask",
                                                                              "wide_features"]
    fp32, int8 = manifest["parity"]["onnx-fp32"], manifest["parity"]["onnx-int8"]
    assert fp32["max_rel_price_diff"] < 1e-4 and abs(fp32["smape_delta_points"]) < 1e-2
    assert int8["rows"] == fp32["rows"] > 0 and "smape_delta_points" in int8
    regressor = PriceRegressor.load(tmp_path / "price" / "assets", weights=False)
    prices = regressor.predict(["premium item model 3"], [""], run=OrtPrice.load(tmp_path / "price"))
    assert prices.shape == (1,) and prices[0] > 0


def test_cli_export_prints_parity_and_refuses_bad_input(tiny_checkpoint, tmp_path, capsys):
    from shelfml.cli import main

    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--no-int8", "--parity-rows", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "tagger" and "onnx-int8" not in out["parity"]
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a shelfml checkpoint" in capsys.readouterr().err
