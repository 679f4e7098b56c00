"""The layout's promises: a serving runtime without torch, a registry of model families, and artifacts
that travel (a checkpoint copied elsewhere, its training data and index deleted, still exports, packages,
serves and tags the same)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shelfml.families import FAMILIES, UnknownTaskError, family
from shelfml.training.trainer import TrainConfig

SERVED_MODELS = Path(__file__).parents[1] / "model_repository" / "models"
TEXTS = ["stainless steel water bottle 750 ml blue", "cotton round neck t-shirt for men",
         "wireless optical mouse with usb receiver", "analog wrist watch for women gold dial"]

# Run in a fresh interpreter: import every served module (the model.py files with a stand-in for Triton's
# pb_utils), load both services from a real repository and answer requests in-process, then report which
# of torch / transformers got imported along the way.
GUARD = """
import importlib.util, json, sys, types
from pathlib import Path
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
repo, models = Path(sys.argv[1]), Path(sys.argv[2])
for source in sorted(models.glob("*.py")):
    spec = importlib.util.spec_from_file_location(source.stem, source)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import shelfml.client.client, shelfml.client.cli
from shelfml.price.service import PriceService
from shelfml.serving import inprocess_runner
from shelfml.tagger.runners import inprocess_step_factory
from shelfml.tagger.service import TaggerService
texts = json.loads(sys.argv[3])
tagger = TaggerService(repo / "tagger/1/assets", inprocess_step_factory(repo, "tagger_encoder", "tagger_decoder"))
price = PriceService(repo / "price/1/assets", inprocess_runner(repo, "price_regressor", "price"))
paths = [p.label.path for p in tagger.tag(texts)]
prices = price.price(texts, [b""] * len(texts))["price"]
assert len(paths) == len(prices) == len(texts)
print(json.dumps(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)))
"""


def test_served_modules_import_no_torch(served_repository):
    done = subprocess.run([sys.executable, "-c", GUARD, str(served_repository.repo), str(SERVED_MODELS),
                           json.dumps(TEXTS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError, match="unknown task 'colour'; known tasks: price, tagger"):
        family("colour")
    assert {f.task for f in FAMILIES.values()} == {"tagger", "price"}
    for fam in FAMILIES.values():  # every family names a served model source that exists and a contract
        assert (SERVED_MODELS / fam.model_source).is_file()
        assert fam.service.name == fam.task


def test_artifacts_are_readable_by_other_users(tiny_checkpoint, served_repository):
    for root in (tiny_checkpoint, served_repository.exports["tagger"], served_repository.repo):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def _catalog_csv(small_catalog, path: Path) -> tuple[Path, list[str]]:
    """The synthetic catalog as a CSV file (so that deleting it really removes the training data)."""
    frame = small_catalog.frame
    levels = list(small_catalog.level_columns)
    frame[["text", "brand", *levels]].to_csv(path, index=False)
    return path, levels


@pytest.mark.slow
def test_a_copied_checkpoint_without_its_data_and_index_exports_serves_and_tags_the_same(small_catalog, tmp_path):
    from shelfml.data import DataSpec
    from shelfml.export.exporter import ExportArgs, export_checkpoint
    from shelfml.model_repository.build import build_repository
    from shelfml.model_repository.server import TritonServer
    from shelfml.retrieval import build_index_from_spec
    from shelfml.tagger import Tagger
    from shelfml.tagger.runners import OrtT5
    from shelfml.training.tagger import TaggerArgs, train_tagger
    from test_serving import served_tags
    import tritonclient.grpc as grpcclient

    csv, levels = _catalog_csv(small_catalog, tmp_path / "catalog.csv")
    spec = DataSpec(source=str(csv), text_col="text", levels=levels, brand_col="brand")
    build_index_from_spec(spec, tmp_path / "index")
    args = TaggerArgs(shape="tiny", vocab_size=800, val_decode_limit=16, retrieval=2,
                      retrieval_index=str(tmp_path / "index"),
                      train=TrainConfig(epochs=1, max_steps=6, batch_size=16, lr=3e-3, progress=False))
    train_tagger(spec, tmp_path / "train" / "tagger", args)
    export_args = ExportArgs(parity_rows=16, int8_max_drop=100.0)
    before = export_checkpoint(tmp_path / "train" / "tagger", tmp_path / "export-before", export_args)
    tagger = Tagger.load(tmp_path / "export-before" / "assets", weights=False)
    expected = [p.label for p in tagger.predict(TEXTS, make_step=OrtT5.load(tmp_path / "export-before").make_step)]

    moved = tmp_path / "elsewhere" / "tagger"
    shutil.copytree(tmp_path / "train" / "tagger", moved)
    for gone in (tmp_path / "train", tmp_path / "index", csv):
        shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    after = export_checkpoint(moved, tmp_path / "export", export_args)
    assert after["parity_sample"]["rows"] == 16 and after["parity_sample"]["source"].endswith("parity_sample.json")
    assert after["parity"]["onnx-fp32"] == before["parity"]["onnx-fp32"]
    build_repository(tmp_path / "repo", tagger=tmp_path / "export")
    assert (tmp_path / "repo" / "tagger" / "1" / "assets" / "retrieval_index" / "index.json").is_file()
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log") as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            paths, brands = served_tags(client, TEXTS)
    assert [(tuple(p.split(" > ")), b) for p, b in zip(paths, brands)] == [(e.path, e.brand) for e in expected]


def test_export_without_a_parity_sample_asks_for_data(tiny_checkpoint, tmp_path):
    from shelfml.checkpoint import CheckpointError
    from shelfml.export.exporter import export_checkpoint

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    (old / "parity_sample.json").unlink()
    with pytest.raises(CheckpointError, match="pass --data CSV"):
        export_checkpoint(old, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_no_stage_switches_on_the_task_name():
    """What is particular to a family is reached through the registry (families.py) and the family's package."""
    import re

    root = Path(__file__).parents[1]
    switch = re.compile(r"""\btask\b["']?\]?\s*(==|!=)\s*["']|["'](tagger|price)["']\s*(==|!=)\s*\w*task""")
    folders = ("shelfml", "training", "export", "model_repository", "client", "benchmarks")
    hits = [f"{path.relative_to(root)}:{i}: {line.strip()}" for folder in folders for path in (root / folder).rglob("*.py")
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if switch.search(line)]
    assert not hits, "task switches outside the registry:\n" + "\n".join(hits)
    for fam in FAMILIES.values():  # and every hook the registry names resolves
        from shelfml.benchmarks.profiles import BenchProfile

        assert all(callable(fam.hook(hook)) for hook in ("evaluate", "predict", "baseline"))
        assert isinstance(fam.hook("bench"), BenchProfile)


def test_every_package_is_in_the_distribution():
    """A non-editable install (the server image, a client-only install) ships only the packages listed."""
    import tomllib

    root = Path(__file__).parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = {f"shelfml.{p.parent.name}" for p in (root / "shelfml").glob("*/__init__.py")}
    assert dirs <= listed, f"packages missing from pyproject.toml: {sorted(dirs - listed)}"
    assert set(config["package-dir"]) <= listed  # every stage folder mapped into the package is shipped
