"""The ``shelfml`` command line, run as a real subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import SHARED, needs_shared


def shelfml(*args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "shelfml", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_predict_arguments_and_stdin_print_json_lines(tiny_checkpoint):
    out = shelfml("predict", tiny_checkpoint, "Green Harbor shampoo 500 ml", "steel water bottle 1 l").stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["Green Harbor shampoo 500 ml", "steel water bottle 1 l"]
    manifest = json.loads((tiny_checkpoint / "shelfml.json").read_text())
    paths = {tuple(p) for p in manifest["taxonomy"]["paths"]}
    for r in records:
        assert tuple(r[level] for level in manifest["taxonomy"]["levels"]) in paths
        assert r["label"].startswith(" > ".join(r[level] for level in manifest["taxonomy"]["levels"]))
        assert 0 < r["confidence"] <= 1
    piped = shelfml("predict", tiny_checkpoint, stdin="Green Harbor shampoo 500 ml\n\nsteel water bottle 1 l\n").stdout
    assert piped == out


def test_predict_without_texts_fails_clearly(tiny_checkpoint):
    proc = shelfml("predict", tiny_checkpoint, stdin="", check=False)
    assert proc.returncode == 2 and "no input texts" in proc.stderr


def test_predict_file_encodings(tiny_checkpoint, tmp_path):
    """A latin-1 file is a clear error (exit 2, the byte and line named), readable with --encoding; a UTF-8
    byte-order mark does not stay in the first text."""
    (tmp_path / "latin1.txt").write_bytes("steel bottle\ncaf\u00e9 mug\n".encode("latin-1"))
    proc = shelfml("predict", tiny_checkpoint, "--file", tmp_path / "latin1.txt", check=False)
    assert proc.returncode == 2 and "not valid utf-8: byte 0xe9 on line 2" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    out = shelfml("predict", tiny_checkpoint, "--file", tmp_path / "latin1.txt", "--encoding", "latin-1").stdout
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["steel bottle", "caf\u00e9 mug"]
    (tmp_path / "bom.txt").write_bytes("\ufeffsteel bottle\n".encode("utf-8"))
    out = shelfml("predict", tiny_checkpoint, "--file", tmp_path / "bom.txt").stdout
    assert json.loads(out)["text"] == "steel bottle"


def test_a_checkpoint_with_a_deleted_tokenizer_file_names_it(tiny_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    (copy / "tokenizer_config.json").unlink()
    proc = shelfml("predict", copy, "steel bottle", check=False)
    assert proc.returncode == 2 and "has no tokenizer_config.json: the tokenizer is incomplete" in proc.stderr, proc.stderr


def test_evaluate_writes_metrics_and_predictions(tiny_checkpoint, tmp_path):
    proc = shelfml("evaluate", tiny_checkpoint, "--out", tmp_path / "eval", "--eval-limit", 20)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert json.loads(proc.stdout.splitlines()[-1])["item_accuracy"] == metrics["item_accuracy"]
    for key in ("level_accuracy", "brand_accuracy", "item_accuracy", "invalid_path_rate", "latency"):
        assert key in metrics
    assert metrics["invalid_path_rate"] == 0.0 and metrics["items"] == 20
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(preds.columns) == ["input", "gold", "predicted", "confidence", "correct", "level_probability"]
    assert len(preds) == 20
    assert preds["correct"].mean() == pytest.approx(metrics["item_accuracy"])
    report = (tmp_path / "eval" / "report.md").read_text()  # the report and the pictures it links
    confidence = metrics["confidence"]
    assert set(confidence["levels"]) == set(confidence["baseline"]["levels"]) == {"supergroup", "group", "module"}
    for level in confidence["levels"].values():
        assert {"ece_before", "ece_after", "brier_after", "at_threshold", "coverage_at_precision"} <= set(level)
    assert 0 <= confidence["backoff_answers"] <= 1 and "rows" not in confidence["baseline"]  # per-row data stays out
    assert "rows" not in confidence
    assert "## Confidence: calibrated per level" in report
    for png in ("coverage.png", "confusion.png", "training.png", "calibration.png"):
        assert f"]({png})" in report and (tmp_path / "eval" / png).stat().st_size > 1000
    assert metrics["paths"]["report"].endswith("report.md") and "## The " in report
    coverage = metrics["coverage"]
    assert coverage["0"]["coverage"] == 1.0 and coverage["0"]["accuracy"] == pytest.approx(metrics["item_accuracy"])
    split = metrics["brand_split"]
    assert split["seen"]["items"] + split["unseen"]["items"] == 20
    assert split["in_input"]["items"] + split["not_in_input"]["items"] == 20


def test_evaluate_on_a_non_checkpoint_fails_clearly(tmp_path):
    proc = shelfml("evaluate", tmp_path, check=False)
    assert proc.returncode == 2 and "not a shelfml checkpoint" in proc.stderr


def test_train_refuses_to_overwrite_without_force(tiny_checkpoint):
    before = sorted(p.name for p in tiny_checkpoint.iterdir())
    proc = shelfml("train", "tagger", "--out", tiny_checkpoint, "--rows", 200, "--max-steps", 1, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == before


def test_train_with_a_bad_csv_names_the_column(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("title,cat\nmug,home\n")
    proc = shelfml("train", "tagger", "--data", csv, "--text-col", "title", "--levels", "cat,sub",
                   "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "['sub'] not found" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_baseline_prints_the_same_metrics(tmp_path):
    proc = shelfml("baseline", "--rows", 600, "--out", tmp_path / "b")
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert json.loads(proc.stdout.splitlines()[-1])["item_accuracy"] == metrics["item_accuracy"]
    assert metrics["invalid_path_rate"] == 0.0 and 0.2 < metrics["level_accuracy"]["supergroup"] <= 1.0
    (tmp_path / "file.json").write_text("{}")  # --out names a folder everywhere: a file there is refused, kept
    proc = shelfml("baseline", "--rows", 600, "--out", tmp_path / "file.json", check=False)
    assert proc.returncode == 2 and "is a file: it names a folder" in proc.stderr
    assert (tmp_path / "file.json").read_text() == "{}"


def test_pipeline_trains_exports_serves_and_reports_every_stage(tmp_path):
    out = tmp_path / "run"
    shelfml("pipeline", "--out", out, "--rows", 400, "--epochs", 1, "--max-steps", 8, "--vocab-size", 600)
    report = json.loads((out / "report.json").read_text())
    tagger = report["tagger"]
    assert {"metrics", "baseline", "paths", "split"} <= set(tagger)
    assert tagger["metrics"]["invalid_path_rate"] == 0.0
    for path in tagger["paths"].values():
        assert Path(path).exists(), path
    served = report["serving"]  # exported, served by the real tritonserver, called over gRPC
    assert served["tagger"]["rows"] == tagger["metrics"]["items"]
    assert served["tagger"]["agreement_with_eager"] == 1.0
    assert served["tagger"]["metrics"]["item_accuracy"] == tagger["metrics"]["item_accuracy"]
    assert served["price"]["rows"] == report["price"]["metrics"]["items"] and served["price"]["smape_vs_eager"] < 0.1
    assert served["exports"]["tagger"]["parity"]["onnx-fp32"]["greedy_tokens_identical"]
    assert (out / "repository" / "tagger" / "configs" / "cpu.pbtxt").is_file()


@needs_shared
def test_sephora_with_short_paths_trains_and_evaluates(tmp_path):
    """Sephora (../shared/data): 990 products stop at level 2; --allow-short-paths keeps them as valid shorter
    paths of the taxonomy, decodable and scored."""
    csv = SHARED / "sephora_us_2023/product_info.csv.gz"
    data = ["--data", csv, "--text-col", "product_name", "--brand-col", "brand_name",
            "--levels", "primary_category,secondary_category,tertiary_category", "--limit", 1500]
    from shelfml.data import DataSpec, load_catalog

    spec = DataSpec(source=str(csv), text_col="product_name", brand_col="brand_name",
                    levels=["primary_category", "secondary_category", "tertiary_category"])
    strict, short = load_catalog(spec), load_catalog(DataSpec(**{**spec.__dict__, "allow_short_paths": True}))
    assert len(short) - len(strict) == 990 - 8  # 8 of the 990 stop at level 1: still skipped
    shelfml("train", "tagger", *data, "--allow-short-paths", "--out", tmp_path / "t", "--shape", "tiny",
            "--vocab-size", 800, "--max-steps", 12, "--batch-size", 16)
    manifest = json.loads((tmp_path / "t" / "shelfml.json").read_text())
    assert manifest["data"]["rows"] == 1500 and "tertiary_category" not in str(manifest["data"]["skipped"])
    depths = {len(p) for p in manifest["taxonomy"]["paths"]}
    assert depths == {2, 3}
    shelfml("evaluate", tmp_path / "t", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["invalid_path_rate"] == 0.0 and (tmp_path / "eval" / "report.md").is_file()
    preds = pd.read_csv(tmp_path / "eval" / "predictions.csv", keep_default_na=False)
    assert preds["gold"].str.split(" | ", regex=False).str[0].str.count(" > ").eq(1).sum() > 0  # short gold paths
