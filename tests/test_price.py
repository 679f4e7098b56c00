"""The price regressor: SMAPE, target transform, training, the image branch, checkpoints, data, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import SHARED, fast_args, needs_shared, price_csv
from shelfml.checkpoint import MANIFEST, CheckpointError, read_manifest, write_checkpoint
from shelfml.data import DataSpec, load_catalog
from shelfml.evaluate import evaluate_price
from shelfml.images import AugmentConfig, ImageSpec, ImageStore
from shelfml.metrics import price_metrics, smape
from shelfml.price import PriceConfig, PriceRegressor, default_encoder, from_log, resolve_pooling, to_log
from shelfml.price.model import build_regressor, price_loss, to_torch
from shelfml.training.price import LengthBucketSampler, train_price
from shelfml.training.trainer import TrainConfig, fit

TEXTS = ["steel water bottle 1 l", "gold plated necklace set", "cotton socks pack of 3", "leather office chair"]


def batch(reg, texts, images=None, log_prices=None) -> dict:
    """A training batch: the regressor's feeds as tensors, plus log1p labels."""
    feeds = to_torch(reg.feeds(texts, images))
    return feeds if log_prices is None else {**feeds, "labels": torch.as_tensor(log_prices, dtype=torch.float32)}


def regressor(encoder: Path, vision: Path | None = None, **cfg) -> PriceRegressor:
    torch.manual_seed(0)
    reg = build_regressor(PriceConfig(images=vision is not None, max_length=32, target_mean=5.0, **cfg), encoder,
                          vision)
    reg.model.eval()
    return reg


# ---------------------------------------------------------------------------------------------
# SMAPE and the target transform


@pytest.mark.parametrize(
    "truth, pred, expected",
    [
        ([100.0], [100.0], 0.0),
        ([0.0], [0.0], 0.0),
        ([0.0], [5.0], 200.0),
        ([5.0], [0.0], 200.0),
        ([100.0], [110.0], 200 * 10 / 210),
        ([1.0, 2.0], [2.0, 2.0], (200 * 1 / 3 + 0) / 2),
        ([0.0, 10.0, 10.0], [0.0, 30.0, 5.0], (0 + 200 * 20 / 40 + 200 * 5 / 15) / 3),
    ],
    ids=["exact", "both-zero", "truth-zero", "pred-zero", "ten-percent-over", "two-rows", "mixed-with-zero"],
)
def test_smape_matches_its_definition(truth, pred, expected):
    assert smape(truth, pred) == pytest.approx(expected)
    assert smape(pred, truth) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize("truth, pred", [([100.0, 20.0], [110.0, 5.0]), ([0.5, 3000.0], [0.4, 2500.0])],
                         ids=["moderate", "wide-range"])
def test_smape_loss_is_the_metric_in_price_space(truth, pred):
    loss = price_loss(torch.tensor(to_log(pred)), torch.tensor(to_log(truth)), "smape", eps=1e-9)
    assert 100 * loss.item() == pytest.approx(smape(truth, pred), rel=1e-6)


@pytest.mark.parametrize("prices", [[0.0, 0.38, 1.0, 550.0, 571230.0], [1e-6, 12.5, 99999.99]], ids=["real", "edge"])
def test_log1p_expm1_round_trip(prices):
    assert np.allclose(from_log(to_log(prices)), prices, rtol=1e-12, atol=1e-12)


def test_inverse_is_clipped_at_zero():
    assert from_log([-3.0, 0.0, 1e6]).tolist()[:2] == [0.0, 0.0] and np.isfinite(from_log([1e6])).all()


def test_price_metrics_report_every_decile():
    truth = np.arange(1, 101, dtype=float)
    metrics = price_metrics(truth, truth * 1.1)
    assert metrics["items"] == 100 and metrics["r2_log1p"] > 0.98
    assert [d["items"] for d in metrics["smape_by_decile"]] == [10] * 10
    assert metrics["smape_by_decile"][0]["price_min"] == 1 and metrics["smape_by_decile"][-1]["price_max"] == 100
    assert metrics["mae"] == pytest.approx(5.05) and metrics["smape"] == pytest.approx(200 * 0.1 / 2.1)
    assert price_metrics([3.0, 3.0], [3.0, 4.0])["r2"] is None  # constant truth


# ---------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("loss", ["smape", "mse-log", "huber-log"])
def test_head_trains_on_synthetic_data_and_loss_falls(tiny_encoder, loss):
    reg = regressor(tiny_encoder, loss=loss, dropout=0.0)
    words = {"budget": 20.0, "standard": 200.0, "premium": 2000.0}
    texts = [f"{w} thing" for w in words] * 16
    logs = to_log([words[t.split()[0]] for t in texts])
    loader = DataLoader(list(range(len(texts))), batch_size=16, shuffle=True,
                        collate_fn=lambda idx: batch(reg, [texts[i] for i in idx], log_prices=logs[idx]))
    fixed = batch(reg, texts, log_prices=logs)
    with torch.no_grad():
        before = reg.model(**fixed).loss.item()
    history = fit(reg.model, loader, lambda m: {"score": 0.0}, lambda metrics: None,
                  TrainConfig(epochs=12, lr=1e-2, patience=99, progress=False, device="cpu"))
    reg.model.eval()
    with torch.no_grad():
        after = reg.model(**fixed).loss.item()
    assert after < 0.5 * before, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert smape(from_log(logs), reg.predict(texts)) < 40


def test_length_buckets_cover_every_row_once_and_group_lengths():
    lengths = list(np.random.default_rng(0).integers(1, 100, 1000))
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and list(sampler) != order  # a new shuffle each epoch
    spreads = [np.ptp([lengths[i] for i in order[k : k + 32]]) for k in range(0, 992, 32)]
    assert np.mean(spreads) < 10  # random batches would spread over ~95


# ---------------------------------------------------------------------------------------------
# The image branch


def test_picture_statuses_are_counted(pictures):
    counts = ImageStore(ImageSpec(size=32)).count(pictures.values())
    assert counts == {"ok": 2, "none": 1, "link": 1, "missing": 1, "corrupt": 1}


@pytest.mark.parametrize("present", ["all", "some", "none"])
def test_image_branch_runs_with_all_some_and_no_pictures(tiny_encoder, tiny_vision, pictures, present):
    reg = regressor(tiny_encoder, tiny_vision)
    paths = {"all": [pictures["ok"], pictures["ok2"]] * 2,
             "some": [pictures["ok"], pictures["missing"], pictures["corrupt"], pictures["ok2"]],
             "none": [pictures["none"], pictures["missing"], pictures["corrupt"], pictures["link"]]}[present]
    feeds = batch(reg, TEXTS, paths, log_prices=to_log([10, 20, 30, 40]))
    assert feeds["image_mask"].sum().item() == sum(p in (pictures["ok"], pictures["ok2"]) for p in paths)
    assert len(feeds["pixel_values"]) == len(TEXTS) and feeds["image_mask"].shape == (len(TEXTS), 1)
    out = reg.model(**feeds)
    assert torch.isfinite(out.log_price).all() and torch.isfinite(out.loss)
    out.loss.backward()  # gradients flow whatever the mix
    prices = reg.predict(TEXTS, paths)
    assert prices.shape == (4,) and np.isfinite(prices).all() and (prices >= 0).all()


def test_missing_and_corrupt_pictures_give_the_same_prediction(tiny_encoder, tiny_vision, pictures):
    reg = regressor(tiny_encoder, tiny_vision)
    text = TEXTS[0]
    absent = [pictures[s] for s in ("missing", "corrupt", "none", "link")]
    prices = reg.predict([text] * 4, absent)
    assert np.all(prices == prices[0]), prices
    alone = reg.predict([text], [pictures["corrupt"]])
    assert np.allclose(alone, prices[0], rtol=1e-6)
    assert reg.predict([text], [pictures["ok"]])[0] != prices[0]  # a real picture is used


def test_augmentation_is_seeded_and_keeps_the_shape(pictures):
    store = ImageStore(ImageSpec(size=32))
    cfg = AugmentConfig(erase=1.0)
    a = store.array(pictures["ok"], cfg, np.random.default_rng(1))
    b = store.array(pictures["ok"], cfg, np.random.default_rng(1))
    c = store.array(pictures["ok"], cfg, np.random.default_rng(2))
    plain = store.array(pictures["ok"])
    assert a.shape == plain.shape == (3, 32, 32) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert store.array(pictures["corrupt"], cfg, np.random.default_rng(1)) is None
    assert "torchvision" not in sys.modules


def test_mixup_changes_training_only(tiny_encoder):
    reg = regressor(tiny_encoder, mixup_alpha=0.4)
    feeds = batch(reg, TEXTS, log_prices=to_log([10, 20, 30, 40]))
    with torch.no_grad():
        evaluated = reg.model(**feeds).loss
        reg.model.training = True  # the top module only: MixUp on, every dropout still off
        torch.manual_seed(3)
        mixed = reg.model(**feeds).loss
        reg.model.training = False
        assert reg.model(**feeds).loss == evaluated
    assert torch.isfinite(mixed) and mixed != evaluated


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("images", [False, True], ids=["text-only", "with-images"])
def test_save_load_round_trip_is_exact(tiny_encoder, tiny_vision, pictures, tmp_path, images):
    reg = regressor(tiny_encoder, tiny_vision if images else None)
    ckpt = write_checkpoint(tmp_path / "ckpt", reg.save_files, {"task": "price", "model": reg.cfg.to_dict()})
    loaded = PriceRegressor.load(ckpt)
    before, after = reg.model.state_dict(), loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    paths = [pictures["ok"], "", pictures["corrupt"], pictures["ok2"]]
    assert np.array_equal(reg.predict(TEXTS, paths), loaded.predict(TEXTS, paths))
    assert loaded.cfg == reg.cfg and not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt"))


def _break(name: str):
    return {
        "no-manifest": lambda d: (d / MANIFEST).unlink(),
        "tagger-task": lambda d: (d / MANIFEST).write_text(json.dumps({**json.loads((d / MANIFEST).read_text()),
                                                                        "task": "tagger"})),
        "garbage-weights": lambda d: (d / "model.safetensors").write_bytes(b"garbage"),
        "no-encoder": lambda d: shutil.rmtree(d / "encoder"),
        "other-shape": lambda d: (d / MANIFEST).write_text(json.dumps({**json.loads((d / MANIFEST).read_text()),
                                                                        "model": {"hidden": 7}})),
    }[name]


@pytest.mark.parametrize(
    "breakage, message",
    [("no-manifest", "not a shelfml checkpoint"), ("tagger-task", "holds a tagger model, not a price model"),
     ("garbage-weights", "corrupt"), ("no-encoder", "corrupt"), ("other-shape", "corrupt")],
    ids=["no-manifest", "tagger-task", "garbage-weights", "no-encoder", "other-shape"],
)
def test_broken_price_checkpoints_fail_clearly(tiny_encoder, tmp_path, breakage, message):
    reg = regressor(tiny_encoder)
    ckpt = write_checkpoint(tmp_path / "ckpt", reg.save_files, {"task": "price", "model": reg.cfg.to_dict()})
    _break(breakage)(ckpt)
    with pytest.raises(CheckpointError, match=message):
        PriceRegressor.load(ckpt)


def test_encoder_that_is_not_a_local_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="--encoder .*no config.json.*nothing is downloaded"):
        build_regressor(PriceConfig(), tmp_path)


@pytest.mark.parametrize(
    "pooling_file, requested, expected",
    [(None, "auto", "mean"), ({"pooling_mode_cls_token": True}, "auto", "cls"),
     ({"pooling_mode_mean_tokens": True}, "auto", "mean"), ({"pooling_mode_cls_token": True}, "mean", "mean")],
    ids=["no-pooling-file", "st-cls", "st-mean", "explicit-wins"],
)
def test_pooling_is_chosen_per_encoder(tmp_path, pooling_file, requested, expected):
    if pooling_file:
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_file))
    assert resolve_pooling(tmp_path, requested) == expected


# ---------------------------------------------------------------------------------------------
# Training end to end, data, tracking


def test_train_reports_and_skips_bad_prices(tiny_encoder, tmp_path, capsys):
    path = price_csv(tmp_path)
    with path.open("a") as f:
        f.write("zero priced,0,\nnegative,-4,\nwords,abc,\nempty,,\ninfinite,inf,\n")
    manifest = train_price(DataSpec(source=str(path), text_col="title", price_col="price"), tmp_path / "ckpt",
                           fast_args(tiny_encoder))
    skipped = {"price not a price (price), e.g. 'abc', 'inf'": 2, "missing price (price)": 1,
               "zero or negative price (price)": 2}
    assert manifest["data"]["skipped"] == skipped and manifest["data"]["rows"] == 60
    assert "skipped 5 rows" in capsys.readouterr().err
    saved = read_manifest(tmp_path / "ckpt", task="price")
    assert saved["encoder"]["pooling"] == "mean" and saved["model"]["loss"] == "smape" and saved["history"]
    assert {"smape", "mae", "rmse", "r2"} <= set(saved["metrics"]["validation"])


def test_train_with_images_counts_pictures_and_evaluates(tiny_encoder, tiny_vision, pictures, tmp_path):
    path = price_csv(tmp_path, pictures)
    with path.open("a") as f:
        f.write(f"broken picture item,50,{pictures['corrupt']}\nlinked item,60,{pictures['link']}\n")
    spec = DataSpec(source=str(path), text_col="title", price_col="price", image_col="img")
    manifest = train_price(spec, tmp_path / "ckpt", fast_args(tiny_encoder, images=True, vision_model=str(tiny_vision),
                                                             mixup=0.4))
    assert manifest["vision"]["init"] == str(tiny_vision) and manifest["model"]["image"]["size"] == 32
    assert manifest["images"]["train"]["ok"] > 0
    metrics = evaluate_price(tmp_path / "ckpt", split="all", out=tmp_path / "eval")
    assert metrics["images"] == {"ok": 20, "none": 40, "link": 1, "missing": 0, "corrupt": 1}
    assert metrics["with_image"]["items"] == 20 and metrics["items"] == 62
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv", keep_default_na=False)
    assert (preds["image_status"] == "corrupt").sum() == 1 and len(preds) == 62
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "](price_scatter.png)" in report and (tmp_path / "eval" / "price_scatter.png").stat().st_size > 1000
    assert "## SMAPE per price decile" in report


@pytest.mark.parametrize("installed", [False, True], ids=["mlflow-absent", "mlflow-present"])
def test_mlflow_tracking_is_optional(tiny_encoder, tmp_path, monkeypatch, capsys, installed):
    calls: list[str] = []
    fake = None
    if installed:
        fake = types.ModuleType("mlflow")
        for name in ("set_tracking_uri", "set_experiment", "log_params", "log_metrics"):
            setattr(fake, name, lambda *a, _n=name, **k: calls.append(_n))
        fake.start_run = lambda **k: __import__("contextlib").nullcontext()
    monkeypatch.setitem(sys.modules, "mlflow", fake)  # None makes `import mlflow` fail
    train_price(DataSpec(source=str(price_csv(tmp_path)), text_col="title", price_col="price"), tmp_path / "ckpt",
                fast_args(tiny_encoder, mlflow=str(tmp_path / "mlruns")))
    if installed:
        assert calls[:3] == ["set_tracking_uri", "set_experiment", "log_params"] and calls.count("log_metrics") == 2
    else:
        assert "mlflow is not installed" in capsys.readouterr().err


@needs_shared
def test_amazon_ml_2025_schema_loads_as_is():
    path = SHARED / "amazon_ml_2025_sample" / "amazon_ml_2025_train_sample_600.csv.gz"
    catalog = load_catalog(DataSpec(source=str(path), text_col="catalog_content", price_col="price",
                                    image_col="image_link"), task="price")
    assert len(catalog) == 600 and catalog.skipped == {}
    assert ImageStore().count(catalog.frame["image"][:20])["link"] == 20  # URLs: counted, never fetched


# ---------------------------------------------------------------------------------------------
# The real MiniLM: offline loading, and one short run through the command line


def test_minilm_loads_with_the_hub_unreachable(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    code = ("from shelfml.price.model import load_encoder\nfrom shelfml.price import resolve_pooling, default_encoder\n"
            "tok, enc = load_encoder()\n"
            "out = enc(**tok(['steel water bottle'], return_tensors='pt')).last_hidden_state\n"
            "print(out.shape[-1], resolve_pooling(default_encoder()))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["384", "mean"]


def shelfml(capsys, *args) -> str:
    """Run the command line in this process (test_cli.py covers the subprocess); returns stdout."""
    from shelfml.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return out


def test_cli_trains_minilm_evaluates_and_runs_the_baseline(tmp_path, capsys):
    ckpt = tmp_path / "price"
    shelfml(capsys, "train", "price", "--rows", 300, "--max-steps", 3, "--max-length", 24, "--batch-size", 16,
            "--val-limit", 32, "--out", ckpt)
    manifest = read_manifest(ckpt, task="price")
    assert manifest["encoder"]["init"] == default_encoder() and manifest["encoder"]["pooling"] == "mean"
    out = shelfml(capsys, "evaluate", ckpt, "--out", tmp_path / "eval", "--eval-limit", 20)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert json.loads(out.splitlines()[-1])["smape"] == metrics["smape"]
    assert {"smape", "mae", "rmse", "r2", "smape_by_decile"} <= set(metrics) and 0 <= metrics["smape"] <= 200
    assert len(metrics["smape_by_decile"]) == 10 and metrics["items"] == 20
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(preds.columns) == ["input", "image", "image_status", "price", "predicted", "abs_error", "smape"]
    assert preds["smape"].mean() == pytest.approx(metrics["smape"], abs=1e-3)
    assert json.loads(shelfml(capsys, "predict", ckpt, "steel water bottle 1 l"))["price"] > 0
    baseline = json.loads(shelfml(capsys, "baseline", "--task", "price", "--rows", 300).splitlines()[-1])
    assert "Ridge" in baseline["model"] and 0 < baseline["smape"] < 200


# ---------------------------------------------------------------------------------------------
# The wide branch


def test_wide_ridge_is_fitted_out_of_fold_and_round_trips(tmp_path):
    from shelfml.price.wide import WideRidge

    catalog = load_catalog(DataSpec(synthetic_rows=800), task="price")
    train, val = catalog.subset(np.arange(650)), catalog.subset(np.arange(650, 800))
    labels = train.labels()
    wide, oof = WideRidge.fit(train.inputs(), to_log(train.frame["price"]), val.inputs(), val.frame["price"].to_numpy(),
                              train.frame["text"].tolist(), {"path": [lab.path for lab in labels],
                                                             "brand": [lab.brand for lab in labels]})
    assert wide.fit_info.blocks == ["quantities", "n-grams", "path", "brand"]
    truth = train.frame["price"].to_numpy()
    assert smape(truth, from_log(oof)) > smape(truth, from_log(wide.predict(train.inputs()))) + 1  # held out: worse
    val_smape = smape(val.frame["price"].to_numpy(), from_log(wide.predict(val.inputs())))
    assert val_smape == pytest.approx(wide.fit_info.validation_smape, abs=0.01)  # prediction = what was chosen
    wide.save(tmp_path / "wide")
    again = WideRidge.load(tmp_path / "wide")
    assert np.array_equal(again.predict(val.inputs()), wide.predict(val.inputs()))
    small, large = wide.predict(["Green Harbor Herbal Shampoo 100 ml", "Green Harbor Herbal Shampoo 1 L"])
    assert large > small  # more of the same product costs more: the quantity block
    unlabelled, _ = WideRidge.fit(train.inputs(), to_log(train.frame["price"]), val.inputs(),
                                  val.frame["price"].to_numpy(), train.frame["text"].tolist())
    assert unlabelled.fit_info.blocks == ["quantities", "n-grams"] and unlabelled.fit_info.text_weight == 1.0


def test_the_head_starts_at_the_wide_prediction(tiny_encoder):
    """With the wide branch, a fresh model predicts exactly the wide log price (the head's last layer starts at
    zero); training moves it from there."""
    cfg = PriceConfig(wide=True, target_mean=4.0, max_length=16)
    regressor = build_regressor(cfg, tiny_encoder, wide=types.SimpleNamespace(predict=lambda texts: None))
    feeds = regressor.feeds(["red mug", "blue kettle 1 l"], wide_features=np.float32([[2.5], [6.25]]))
    out = regressor.model.eval()(**to_torch(feeds)).log_price
    assert out.detach().numpy() == pytest.approx([2.5, 6.25], rel=1e-5)
    with pytest.raises(AssertionError, match="wide branch"):
        regressor.model(**{k: v for k, v in to_torch(feeds).items() if k != "wide_features"})


def test_a_wide_checkpoint_serves_its_branch_from_text(price_checkpoint, tmp_path):
    """The default recipe has the wide branch: saved in the checkpoint, loaded with it, computed from text."""
    manifest = read_manifest(price_checkpoint)
    assert manifest["model"]["wide"] and manifest["wide"]["dir"] == "wide"
    regressor = PriceRegressor.load(price_checkpoint)
    feeds = regressor.feeds(["red item model 1", "blue item model 7"])
    assert feeds["wide_features"].shape == (2, 1)
    assert np.allclose(feeds["wide_features"][:, 0], regressor.wide.predict(["red item model 1", "blue item model 7"]))
    metrics = evaluate_price(price_checkpoint, limit=20, out=tmp_path / "eval")
    assert metrics["wide_branch_alone"]["smape"] >= 0 and metrics["smape"] >= 0
