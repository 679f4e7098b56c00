"""Operating the served models: the ``catalog`` model (both models in one request), the prediction and drift
metrics on the real server (and read through a real Prometheus), the taxonomy check at load, Triton's response
cache, and version roll-out and roll-back without a restart or a failed request."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from shelfml.checkpoint import read_manifest
from shelfml.client.client import ClientError, InvalidRequestError, ShelfmlClient
from shelfml.drift import DriftWindow, jensen_shannon, price_reference, top_level_reference
from shelfml.exports import ExportError
from shelfml.labels import Taxonomy, TaxonomyMismatch, check_taxonomy
from shelfml.model_repository.build import Monitoring, build_repository, read_config, write_config
from shelfml.model_repository.server import ModelLoadError, TritonServer
from shelfml.model_repository.versions import add_version, models_to_load, rollback, rolled_back_dir

TEXTS = ["stainless steel water bottle 750 ml blue", "cotton round neck t-shirt for men",
         "wireless optical mouse with usb receiver", "analog wrist watch for women gold dial"]


def metrics_text(server) -> str:
    return urllib.request.urlopen(server.endpoints["metrics"], timeout=10).read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------------------------
# Drift, without a server


def test_jensen_shannon_is_0_for_the_same_mix_and_1_for_disjoint_ones():
    assert jensen_shannon([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0.0 < jensen_shannon([0.5, 0.5], [0.9, 0.1]) < 0.2


def test_the_drift_window_slides_and_reports_only_when_full():
    reference = top_level_reference([("a", "x"), ("b", "y"), ("a", "z"), ("b", "w")], ["a", "b", "c"])
    assert reference["probabilities"] == [0.5, 0.5, 0.0]
    window = DriftWindow(reference, size=4)
    window.add(["a", "b", "a"])
    assert window.rows == 3 and window.divergence() is None
    window.add(["b"])
    assert window.divergence() == pytest.approx(0.0, abs=1e-12)
    window.add(["c"] * 4)  # the whole window replaced by a category the training split never had
    assert window.counts.tolist() == [0, 0, 4] and window.divergence() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 1 row"):
        DriftWindow(reference, size=0)


def test_price_deciles_bin_the_training_prices_evenly():
    prices = np.arange(1, 1001, dtype=float)
    reference = price_reference(prices)
    assert len(reference["edges"]) == 9 and np.allclose(reference["probabilities"], 0.1, atol=0.002)
    window = DriftWindow(reference, size=100)
    window.add(np.random.default_rng(0).choice(prices, 100))
    assert window.divergence() < 0.05
    window.add([5000.0] * 100)  # every served price above the top decile
    assert window.counts.tolist() == [0] * 9 + [100]
    assert window.divergence() == pytest.approx(jensen_shannon([0] * 9 + [1], reference["probabilities"]))
    assert window.divergence() > 0.7


def test_the_checkpoints_hold_their_training_splits_reference(served_repository):
    tagger = read_manifest(served_repository.tagger_checkpoint)
    top = tagger["drift"]["top_level"]
    assert set(top["categories"]) == {p[0] for p in Taxonomy.from_dict(tagger["taxonomy"]).paths}
    assert sum(top["probabilities"]) == pytest.approx(1.0)
    price = read_manifest(served_repository.price_checkpoint)["drift"]["price"]
    assert sum(price["probabilities"]) == pytest.approx(1.0) and price["edges"] == sorted(price["edges"])


def test_a_different_taxonomy_is_named_with_both_hashes():
    check_taxonomy("a" * 64, {"tagger version 1": "a" * 64})
    with pytest.raises(TaxonomyMismatch, match=r"tagger version 2 serves taxonomy b{16}.*built for taxonomy a{16}"):
        check_taxonomy("a" * 64, {"tagger version 1": "a" * 64, "tagger version 2": "b" * 64})
    t = Taxonomy(["l1", "l2"], [("a", "b")], ["x"])
    assert t.sha256() == Taxonomy(["l1", "l2"], [("a", "b")], ["x", "y"]).sha256()  # brands grow: same tree
    assert t.sha256() != Taxonomy(["l1", "l2"], [("a", "c")], ["x"]).sha256()


# ---------------------------------------------------------------------------------------------
# The catalog model and the metrics, on the session's server


@pytest.fixture(scope="module")
def client(served_repository):
    with ShelfmlClient(served_repository.grpc_url) as c:
        yield c


def test_catalog_answers_what_the_tagger_and_the_price_model_answer(served_repository, client, pictures):
    images = [pictures["ok"], None, pictures["corrupt"], None]
    rows = client.catalog(TEXTS, images)
    tags, prices = client.tag(TEXTS), client.price(TEXTS, images)
    for row, tag, price in zip(rows, tags, prices):
        assert (row.tag.path, row.tag.brand, row.tag.abstain) == (tag.path, tag.brand, tag.abstain)
        assert row.tag.level_probability == pytest.approx(tag.level_probability)
        assert row.price.price == pytest.approx(price.price, rel=1e-5) and row.price.has_image == price.has_image
        assert row.tag.model_version == row.price.model_version == 1
        assert row.tagger_ms > 0 and row.price_ms > 0
    assert [r.price.has_image for r in rows] == [True, False, False, False]
    many = [f"{TEXTS[i % 4]} pack of {i}" for i in range(150)]  # more rows than one request may carry
    assert [r.tag.path for r in client.catalog(many)] == [t.path for t in client.tag(many)]


def test_a_bad_catalog_request_fails_alone(client):
    with pytest.raises(InvalidRequestError, match=r"text\[1\] is empty"):
        client.catalog([TEXTS[0], "   "])
    assert client.catalog([TEXTS[0]])[0].tag.path


def test_prediction_metrics_count_what_was_served(served_repository, client):
    server = served_repository.server
    time.sleep(1.5)  # what earlier tests sent is published (every 0.5 s) before the first reading
    before = metrics_text(server)
    tags = client.tag([f"{t} #{i}" for i in range(5) for t in TEXTS])  # new texts: no cache hit
    client.price([f"{t} #{i}" for i in range(5) for t in TEXTS])
    time.sleep(1.5)  # the models publish their metrics every 0.5 s
    after = metrics_text(server)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    rows = len(tags)
    assert grew("shelfml_rows_total", model="tagger", outcome="ok") == rows
    assert grew("shelfml_top_level_total", model="tagger") == rows
    for top in {t.path[0] for t in tags}:
        assert grew("shelfml_top_level_total", model="tagger", category=top) == sum(t.path[0] == top for t in tags)
    assert grew("shelfml_brand_source_total", model="tagger") == rows
    assert grew("shelfml_abstain_total", model="tagger") == sum(t.abstain for t in tags)
    levels = Taxonomy.from_dict(read_manifest(served_repository.tagger_checkpoint)["taxonomy"]).levels
    assert grew("shelfml_confidence_count", model="tagger", level=levels[0]) == rows
    assert grew("shelfml_input_chars_count", model="price") == rows
    assert grew("shelfml_price_count", model="price") == rows
    sha = Taxonomy.from_dict(read_manifest(served_repository.tagger_checkpoint)["taxonomy"]).sha256()
    assert sample(after, "shelfml_taxonomy_info", model="tagger", sha256=sha) == 1
    assert sample(after, "shelfml_model_version_info", model="catalog", version="1") == 1
    assert sample(after, "shelfml_drift_window_rows", model="tagger") > 0


def test_without_the_response_cache_a_failed_request_fails_every_time(client):
    for _ in range(2):
        with pytest.raises(InvalidRequestError, match="is empty"):
            client.catalog(["   "])


def test_catalog_and_batch_columns_from_the_command_line(served_repository, tmp_path, capsys):
    from shelfml.client import cli

    assert cli.main(["--url", served_repository.grpc_url, "catalog", TEXTS[0]]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["path"] and line["versions"] == {"tagger": 1, "price": 1} and line["price"] > 0
    src = tmp_path / "in.csv"
    src.write_text("title\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    assert cli.main(["--url", served_repository.grpc_url, "batch", str(src), "--out", str(out), "--task", "catalog",
                     "--no-progress"]) == 0
    import pandas as pd

    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == ["row", *cli.CATALOG_COLUMNS]
    assert (frame["path"] != "").all() and (frame["price"] > 0).all() and (frame["error"] == "").all()
    assert (frame["tagger_version"] == 1).all() and (frame["price_version"] == 1).all()


# ---------------------------------------------------------------------------------------------
# A server of its own: small drift window, taxonomy refusal, roll-out


@pytest.fixture(scope="module")
def ops_repo(served_repository, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ops") / "repo"
    build_repository(repo, **served_repository.exports, cpu_precision="fp32",
                     monitoring=Monitoring(drift_window=16, response_cache=True))
    return repo


def test_a_repository_whose_models_disagree_on_the_taxonomy_is_refused_at_load(ops_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ops_repo, repo)
    for model in ("tagger", "catalog"):  # configs are the operator's to edit (not hashed): the check still holds
        path = repo / model / "configs" / "cpu.pbtxt"
        config = read_config(path)
        config.parameters["taxonomy_sha256"].string_value = "0" * 64
        write_config(path, config)
    with pytest.raises(ModelLoadError) as e:
        TritonServer(repo, log_file=tmp_path / "triton.log").start()
    for model in ("tagger", "catalog"):
        assert re.search(r"serves taxonomy [0-9a-f]{16}, but this repository was built for taxonomy 0{16}",
                         e.value.models[model]), e.value.models


def test_add_version_refuses_another_models_export_and_another_interface(ops_repo, served_repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ops_repo, repo)
    with pytest.raises(ExportError, match="not a tagger export"):
        add_version(repo, "tagger", served_repository.exports["price"])
    path = repo / "tagger" / "config.pbtxt"
    config = read_config(path)
    config.parameters["taxonomy_sha256"].string_value = "0" * 64  # as if it served another taxonomy
    write_config(path, config)
    with pytest.raises(ExportError, match="parameters differ"):
        add_version(repo, "tagger", served_repository.exports["tagger"])
    assert sorted(p.name for p in (repo / "tagger").iterdir() if p.name.isdigit()) == ["1"]  # nothing written
    with pytest.raises(ExportError, match="nothing to roll back to"):
        rollback(repo, "tagger")


@pytest.fixture(scope="module")
def ops_server(ops_repo, tmp_path_factory):
    with TritonServer(ops_repo, log_file=tmp_path_factory.mktemp("ops-log") / "triton.log") as server:
        yield server


def test_a_skewed_stream_raises_the_drift_gauge_seen_by_prometheus(ops_server, served_repository, tmp_path):
    """A real Prometheus scrapes the real server while one top-level category's products stream in: the drift
    gauge rises above the alert's threshold and the ShelfmlDrift alert fires (its ``for`` shortened)."""
    from shelfml.benchmarks.prometheus import (PrometheusProcess, dashboard_queries, find_binary, rules_for_test,
                                               scrape_config_for)

    if find_binary("prometheus") is None:
        pytest.skip("no prometheus binary (the Debian package `prometheus`; .ci/run installs it)")
    target = f"{ops_server.local_host}:{ops_server.metrics_port}"
    with PrometheusProcess(scrape_config_for(target), {"alerts.yml": rules_for_test()}, tmp_path) as prom, \
            ShelfmlClient(ops_server.grpc_url) as client:
        top = read_manifest(served_repository.tagger_checkpoint)["drift"]["top_level"]
        window = [t.path[0] for t in client.tag([f"{TEXTS[0]} variant {i}" for i in range(48)])][-16:]
        expected = jensen_shannon([window.count(c) for c in top["categories"]], top["probabilities"])
        deadline, state = time.monotonic() + 40, None
        while time.monotonic() < deadline:
            result = prom.query('max(shelfml_drift_jsd{model="tagger",feature="top_level"})')["result"]
            alerts = [a for a in prom.alerts() if a["labels"]["alertname"] == "ShelfmlDrift"]
            state = alerts[0]["state"] if alerts else None
            if result and state == "firing":
                break
            time.sleep(1)
        assert result and float(result[0]["value"][1]) == pytest.approx(expected, abs=1e-6) and expected > 0.1
        assert state == "firing", prom.alerts()
        for expr in dashboard_queries():  # every dashboard panel's query is valid PromQL against real data
            prom.query(expr)


def test_a_repeated_request_is_answered_from_the_response_cache(ops_server):
    with ShelfmlClient(ops_server.grpc_url) as client:
        text = ["reusable canvas tote bag with zipper, cached twice"]
        first = client.tag(text)
        time.sleep(2.2)  # Triton refreshes its own counters every 2 s
        hits = sample(metrics_text(ops_server), "nv_cache_num_hits_per_model", model="tagger")
        rows = sample(metrics_text(ops_server), "shelfml_rows_total", model="tagger", outcome="ok")
        assert client.tag(text) == first
        time.sleep(2.2)
        after = metrics_text(ops_server)
        assert sample(after, "nv_cache_num_hits_per_model", model="tagger") == hits + 1
        assert sample(after, "shelfml_rows_total", model="tagger", outcome="ok") == rows  # the model did not run


def test_the_response_cache_answers_a_request_that_failed_with_an_empty_answer(ops_server):
    """Why the cache is opt-in: Triton 2.51 caches an error answer as an empty success. The client names it."""
    with ShelfmlClient(ops_server.grpc_url) as client:
        with pytest.raises(InvalidRequestError, match="is empty"):
            client.tag(["  \t "])
        with pytest.raises(ClientError, match="holds no output 'path'.*response cache"):
            client.tag(["  \t "])


def test_roll_out_and_back_without_a_restart_or_a_failed_request(ops_server, ops_repo, served_repository):
    """Requests stream to the catalog model while a new tagger version is added and loaded, then rolled back:
    none fails, the answers switch to version 2 and back to 1 (the catalog's own version moves on each time, so
    its response cache never answers with the version before)."""
    failures, versions, stop = [], [], threading.Event()

    def stream():
        with ShelfmlClient(ops_server.grpc_url, retries=0) as client:
            i = 0
            while not stop.is_set():
                try:
                    versions.append(client.catalog([f"{TEXTS[i % 4]} rollout {i}"])[0].tag.model_version)
                except Exception as e:  # counted: the goal is none
                    failures.append(repr(e))
                i += 1

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        time.sleep(1)
        assert add_version(ops_repo, "tagger", served_repository.exports["tagger"]) == 2
        ops_server.load_models(models_to_load(ops_repo, "tagger"))
        time.sleep(1)
        seen_new = len(versions)
        assert rollback(ops_repo, "tagger") == 1
        ops_server.load_models(models_to_load(ops_repo, "tagger"))
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert 2 in versions[:seen_new] and versions[-1] == 1 and versions[0] == 1
    assert (rolled_back_dir(ops_repo) / "2" / "tagger" / "model.py").is_file()  # kept, not deleted
    with ShelfmlClient(ops_server.grpc_url) as client:  # what was cached before is not served after
        assert client.catalog([f"{TEXTS[1]} rollout 1"])[0].tag.model_version == 1
    catalog_versions = sorted(int(p.name) for p in (ops_repo / "catalog").iterdir() if p.name.isdigit())
    assert catalog_versions[-1] == 3
    from shelfml.integrity import verify

    assert verify(ops_repo) > 0  # repository.json records the files on disk after both changes


@pytest.mark.parametrize("argv, message", [
    (["--add-version"], "needs the export to add"),
    (["--rollback", "tagger"], "nothing to roll back to"),
    (["--rollback", "tagger", "--add-version", "--tagger", "x"], "one at a time"),
    (["--server", "127.0.0.1:1"], "goes with --add-version or --rollback"),
    (["--add-version", "--tagger", "{tagger}", "--server", "127.0.0.1:1"], "needs the server's admin key"),
    (["--add-version", "--tagger", "{price}"], "not a tagger export"),
])
def test_repository_version_commands_refuse_clearly(ops_repo, served_repository, tmp_path, capsys, monkeypatch,
                                                    argv, message):
    from shelfml.cli import main

    monkeypatch.delenv("SHELFML_ADMIN_KEY", raising=False)
    repo = tmp_path / "repo"
    shutil.copytree(ops_repo, repo, ignore=shutil.ignore_patterns("[2-9]"))  # version 1 only
    exports = {k: str(v) for k, v in served_repository.exports.items()}
    assert main(["repository", "--out", str(repo), *(a.format(**exports) for a in argv)]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in (repo / "tagger").iterdir() if p.name.isdigit()) == ["1"]


def test_a_roll_out_loads_through_the_command_on_a_running_server(ops_server, ops_repo, served_repository, capsys):
    """``shelfml repository --add-version --server``, then ``--rollback --server``: the server answers with the
    new version, then with the one before, without a restart."""
    from shelfml.cli import main

    base = ["repository", "--out", str(ops_repo), "--server", ops_server.http_url, "--admin-key", ops_server.admin_key]
    assert main([*base, "--add-version", "--price", str(served_repository.exports["price"])]) == 0
    new = json.loads(capsys.readouterr().out)["serving"]["price"]
    with ShelfmlClient(ops_server.grpc_url) as client:
        assert client.catalog([f"{TEXTS[2]} cli roll-out"])[0].price.model_version == new
        assert main([*base, "--rollback", "price"]) == 0
        assert json.loads(capsys.readouterr().out)["serving"] == {"price": 1}
        assert client.catalog([f"{TEXTS[2]} cli roll-back"])[0].price.model_version == 1


def test_a_repository_built_by_another_shelfml_is_refused_by_name(ops_repo, tmp_path):
    from shelfml.serving import SERVED_CODE, check_repository_code

    check_repository_code(ops_repo)
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((ops_repo / "repository.json").read_text())
    manifest.pop("served_code")
    (old / "repository.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match=f"built by another shelfml \\(served code None, this one {SERVED_CODE}\\): "
                                           "rebuild it with `shelfml repository`"):
        check_repository_code(old)
