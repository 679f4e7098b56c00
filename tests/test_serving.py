"""The Triton model repository and the real server: configs against Triton's own schema, served
outputs equal to in-process eager ones, every bad input answered clearly while the server stays up."""

from __future__ import annotations

import functools
import shutil
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from shelfml.price.contract import PRICE_SERVICE
from shelfml.tagger.contract import TAGGER_SERVICE
from shelfml.labels import LEVEL_SEP
from shelfml.model_repository.build import (QUEUE_DELAY_US, RUNTIMES, Batching, QueuePolicy, build_repository, read_config,
                                            write_config)
from shelfml.serving import RequestError, check_numpy, decode_texts, run_isolated
from shelfml.price import PriceRegressor
from shelfml.tagger import Tagger

TEXTS = ["stainless steel water bottle 750 ml blue", "cotton round neck t-shirt for men",
         "wireless optical mouse with usb receiver", "analog wrist watch for women gold dial"]
LEAVES = ("tagger_encoder", "tagger_decoder", "price_regressor")


@pytest.fixture(scope="module")
def client(served_repository):
    with grpcclient.InferenceServerClient(served_repository.grpc_url) as c:
        yield c


def text_input(values, name="text", datatype="BYTES", shape=None):
    array = np.array(values, dtype=object) if datatype == "BYTES" else np.asarray(values)
    if shape is None and datatype == "BYTES":
        array = array.reshape(-1, 1)
    tensor = grpcclient.InferInput(name, list(shape or array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def served_tags(client, texts):
    result = client.infer("tagger", [text_input([t.encode() for t in texts])])
    return [p[0].decode() for p in result.as_numpy("path")], [b[0].decode() for b in result.as_numpy("brand")]


# ---------------------------------------------------------------------------------------------
# The repository


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_config_parses_with_tritons_schema(served_repository, tmp_path, runtime):
    repo = build_repository(tmp_path / "repo", **served_repository.exports, runtime=runtime)
    for model in repo["models"]:
        stock, cpu = read_config(tmp_path / "repo" / model / "config.pbtxt"), read_config(
            tmp_path / "repo" / model / "configs" / "cpu.pbtxt")
        for config in (stock, cpu):
            assert config.name == model and config.max_batch_size == 64
            assert config.HasField("dynamic_batching")
            assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US
            assert not config.dynamic_batching.HasField("default_queue_policy")  # off by default (see QueuePolicy)
            assert config.instance_group
        # the catalog model only calls the others (no BLS while the server loads): no warm-up
        assert len(cpu.model_warmup) == (model != "catalog") and len(stock.model_warmup) == (model in LEAVES)
        assert cpu.backend == "python" and cpu.instance_group[0].kind == cpu.instance_group[0].KIND_CPU
        assert not stock.response_cache.enable and not cpu.response_cache.enable  # opt-in (Monitoring)
        if model in LEAVES:
            assert stock.version_policy.latest.num_versions == cpu.version_policy.latest.num_versions == 2
            assert stock.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[runtime]
            assert stock.instance_group[0].kind == stock.instance_group[0].KIND_GPU
            assert (tmp_path / "repo" / model / "1" / "model.onnx").is_file()
            assert (tmp_path / "repo" / model / "1" / "graph.json").is_file()
    shed = build_repository(tmp_path / "shed", **served_repository.exports, runtime=runtime, force=True,
                            queue=QueuePolicy(max_requests=100, timeout_s=5))
    assert shed["queue_policy"] == {"max_requests": 100, "timeout_s": 5}
    for model in shed["models"]:
        for path in (tmp_path / "shed" / model).glob("**/*.pbtxt"):
            policy = read_config(path).dynamic_batching.default_queue_policy
            assert (policy.max_queue_size, policy.default_timeout_microseconds) == (100, 5_000_000)
            assert policy.timeout_action == policy.REJECT and policy.allow_timeout_override
    assert sorted(repo["models"]) == sorted([*LEAVES, "tagger", "price", "catalog"])
    tuned = build_repository(tmp_path / "tuned", **served_repository.exports, runtime=runtime,
                             batching=Batching(instances=2, preferred=(8, 16, 128), max_queue_delay_us=2000))
    assert tuned["cpu_batching"] == {"instances": 2, "preferred": [8, 16, 128], "max_queue_delay_us": 2000}
    for model in tuned["models"]:
        cpu = read_config(tmp_path / "tuned" / model / "configs" / "cpu.pbtxt")
        assert [g.count for g in cpu.instance_group] == [2]
        assert list(cpu.dynamic_batching.preferred_batch_size) == [8, 16]  # 128 > max_batch_size 64: left out
        assert cpu.dynamic_batching.max_queue_delay_microseconds == 2000
        stock = read_config(tmp_path / "tuned" / model / "config.pbtxt")  # the GPU configs keep their settings
        assert [g.count for g in stock.instance_group] == [1] and not stock.dynamic_batching.preferred_batch_size


@pytest.mark.parametrize("spec", [TAGGER_SERVICE, PRICE_SERVICE], ids=["tagger", "price"])
def test_python_models_declare_the_contracts_names(served_repository, spec):
    config = read_config(served_repository.repo / spec.name / "config.pbtxt")
    assert [i.name for i in config.input] == spec.input_names
    assert [o.name for o in config.output] == spec.output_names
    assert [i.optional for i in config.input] == [n in spec.optional for n in spec.input_names]


def test_the_default_cpu_config_serves_the_validated_int8_graphs(served_repository, tmp_path):
    """``--cpu-precision auto``: the CPU configs run the export's INT8 graphs (the GPU configs keep FP32 for
    TensorRT FP16), served outputs equal the in-process decode loop on those INT8 graphs."""
    from shelfml.export.exporter import ExportArgs, ExportError, export_checkpoint
    from shelfml.model_repository.server import TritonServer
    from shelfml.price.runners import OrtPrice
    from shelfml.tagger.runners import OrtT5

    exports = served_repository.exports
    info = build_repository(tmp_path / "repo", **exports)
    assert info["cpu_precision"] == {"tagger": "int8", "price": "int8"}
    for leaf in LEAVES:
        cpu = read_config(tmp_path / "repo" / leaf / "configs" / "cpu.pbtxt")
        assert cpu.parameters["onnx_file"].string_value == "model.int8.onnx"
        assert read_config(tmp_path / "repo" / leaf / "config.pbtxt").default_model_filename == "model.onnx"
        assert (tmp_path / "repo" / leaf / "1" / "model.int8.onnx").is_file()
    tags = Tagger.load(served_repository.tagger_checkpoint).predict(
        TEXTS, make_step=OrtT5.load(exports["tagger"], int8=True).make_step)
    prices = PriceRegressor.load(served_repository.price_checkpoint).predict(
        TEXTS, run=OrtPrice.load(exports["price"], int8=True))
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as int8:
        assert served_tags(int8, TEXTS) == ([LEVEL_SEP.join(p.label.path) for p in tags], [p.label.brand for p in tags])
        served = int8.infer("price", [text_input([t.encode() for t in TEXTS])]).as_numpy("price")[:, 0]
        assert np.allclose(served, prices, rtol=1e-5)
    fp32 = build_repository(tmp_path / "fp32", **exports, cpu_precision="fp32")
    assert fp32["cpu_precision"] == {"tagger": "fp32", "price": "fp32"}
    assert not list((tmp_path / "fp32").glob("*/1/model.int8.onnx"))
    export_checkpoint(served_repository.price_checkpoint, tmp_path / "no-int8", ExportArgs(int8=False, parity_rows=8))
    assert build_repository(tmp_path / "auto", price=tmp_path / "no-int8")["cpu_precision"] == {"price": "fp32"}
    with pytest.raises(ExportError, match="no validated INT8 graphs.*--cpu-precision fp32"):
        build_repository(tmp_path / "strict", price=tmp_path / "no-int8", cpu_precision="int8")


def test_repository_refuses_nothing_to_serve_and_existing_output(served_repository, tmp_path):
    from shelfml.export.exporter import ExportError

    with pytest.raises(ExportError, match="nothing to serve"):
        build_repository(tmp_path / "r")
    with pytest.raises(FileExistsError, match="--force"):
        build_repository(served_repository.repo, **served_repository.exports)


def test_the_wrong_tasks_export_is_a_one_line_error(served_repository, tmp_path, capsys):
    from shelfml.cli import main

    code = main(["repository", "--tagger", str(served_repository.exports["price"]), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "holds a price export, not a tagger export" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# Served outputs against in-process eager PyTorch


def test_served_tags_equal_in_process_eager_tags(served_repository, client):
    tagger = Tagger.load(served_repository.tagger_checkpoint)
    eager = tagger.predict(TEXTS)
    paths, brands = served_tags(client, TEXTS)
    assert paths == [LEVEL_SEP.join(p.label.path) for p in eager]
    assert brands == [p.label.brand for p in eager]


def test_served_confidence_equals_in_process_eager(served_repository, client):
    """Calibrated per-level probabilities, back-off path, abstention and top-k paths: served == eager, and the
    client library reads them."""
    from shelfml.client.client import ShelfmlClient
    from shelfml.confidence import decide

    tagger = Tagger.load(served_repository.tagger_checkpoint)
    eager = tagger.predict(TEXTS, top_k=1)  # the served default: the prediction alone (more: a repository option)
    decision = decide(eager, tagger.taxonomy.levels, tagger.calibration)
    result = client.infer("tagger", [text_input([t.encode() for t in TEXTS])])
    assert np.allclose(result.as_numpy("level_probability"), decision.probabilities, atol=1e-4)
    assert result.as_numpy("abstain")[:, 0].tolist() == decision.abstain.tolist()
    assert [b[0].decode() for b in result.as_numpy("backoff_path")] == [
        LEVEL_SEP.join(p.label.path[:d]) for p, d in zip(eager, decision.backoff_depth)]
    served_alternatives = [[a.decode() for a in row if a] for row in result.as_numpy("alternatives")]
    assert served_alternatives == [[LEVEL_SEP.join(a) for a, _ in p.alternatives] for p in eager]
    probs = result.as_numpy("alternative_probability")
    assert np.allclose([row[: len(p.alternatives)] for row, p in zip(probs, eager)],
                       [[v for _, v in p.alternatives] for p in eager], atol=1e-4)
    with ShelfmlClient(served_repository.grpc_url) as c:
        tags = c.tag(TEXTS)
    assert [t.abstain for t in tags] == decision.abstain.tolist()
    assert [[a for a, _ in t.alternatives] for t in tags] == [[a for a, _ in p.alternatives] for p in eager]
    assert all(len(t.level_probability) == len(tagger.taxonomy.levels) for t in tags)


def test_thresholds_and_top_k_are_set_per_repository(served_repository, tmp_path):
    """Thresholds of 0 accept every level (no abstention, the back-off path is the path); top_k 2 returns two
    paths; bad thresholds are refused before anything is written."""
    from shelfml.exports import ExportError
    from shelfml.model_repository.server import TritonServer

    export = served_repository.exports["tagger"]
    with pytest.raises(ExportError, match="2 thresholds given for 3 levels"):
        build_repository(tmp_path / "bad", tagger=export, options={"tagger": {"thresholds": "0.5,0.5"}})
    assert not (tmp_path / "bad").exists()
    import subprocess
    import sys

    cli = subprocess.run([sys.executable, "-m", "shelfml", "repository", "--tagger", str(export), "--out",
                          str(tmp_path / "bad"), "--thresholds", "0.9,1.5,0.5"], capture_output=True, text=True)
    assert cli.returncode == 2 and "thresholds must be within 0..1" in cli.stderr and not (tmp_path / "bad").exists()
    build_repository(tmp_path / "repo", tagger=export, cpu_precision="fp32",
                     options={"tagger": {"thresholds": "0,0,0", "top_k": 2}})
    assert read_config(tmp_path / "repo" / "tagger" / "configs" / "cpu.pbtxt").parameters["thresholds"].string_value == "0,0,0"
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as c:
        result = c.infer("tagger", [text_input([t.encode() for t in TEXTS])])
    assert not result.as_numpy("abstain").any()
    assert [b[0] for b in result.as_numpy("backoff_path")] == [p[0] for p in result.as_numpy("path")]
    assert result.as_numpy("alternatives").shape == (len(TEXTS), 2)
    eager = Tagger.load(served_repository.tagger_checkpoint).predict(TEXTS, top_k=2)
    assert [[a.decode() for a in row if a] for row in result.as_numpy("alternatives")] == [
        [LEVEL_SEP.join(a) for a, _ in p.alternatives] for p in eager]
    assert np.allclose([row[: len(p.alternatives)] for row, p in zip(result.as_numpy("alternative_probability"), eager)],
                       [[v for _, v in p.alternatives] for p in eager], atol=1e-4)


def test_the_readme_curl_example_returns_a_valid_tag(served_repository):
    """The README's KServe v2 HTTP JSON example, run with curl as written (the port substituted)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    import json
    import re
    import subprocess
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    command = re.search(r"^curl -s localhost:8000/v2/models/tagger/infer[^\n]*\\\n[^\n]*$", readme, re.M).group(0)
    command = command.replace("localhost:8000", served_repository.server.http_url)
    out = json.loads(subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                                    check=True).stdout)
    outputs = {o["name"]: o["data"] for o in out["outputs"]}
    tagger = Tagger.load(served_repository.tagger_checkpoint)
    expected = tagger.predict(["Green Harbor herbal shampoo 500 ml"])[0].label
    assert outputs["path"] == [LEVEL_SEP.join(expected.path)] and outputs["brand"] == [expected.brand]
    assert 0 < outputs["confidence"][0] <= 1


def test_served_prices_match_eager_with_and_without_pictures(served_repository, client, pictures):
    regressor = PriceRegressor.load(served_repository.price_checkpoint)
    paths = [pictures["ok"], "", pictures["ok2"], pictures["corrupt"]]
    eager = regressor.predict(TEXTS, paths)
    images = [open(p, "rb").read() if p else b"" for p in paths]
    result = client.infer("price", [text_input([t.encode() for t in TEXTS]), text_input(images, name="image")])
    assert np.allclose(result.as_numpy("price")[:, 0], eager, rtol=1e-3)
    assert result.as_numpy("has_image")[:, 0].tolist() == [True, False, True, False]
    text_only = client.infer("price", [text_input([t.encode() for t in TEXTS])])  # "image" is optional
    assert np.allclose(text_only.as_numpy("price")[:, 0], regressor.predict(TEXTS, [""] * 4), rtol=1e-3)


def test_concurrent_requests_are_batched_and_answered_in_order(served_repository, client):
    tagger = Tagger.load(served_repository.tagger_checkpoint)
    expected = [LEVEL_SEP.join(p.label.path) for p in tagger.predict(TEXTS)]
    results, done = {}, threading.Event()

    def callback(i, result, error):
        results[i] = (result, error)
        if len(results) == 16:
            done.set()

    for i in range(16):
        client.async_infer("tagger", [text_input([TEXTS[i % 4].encode()])], functools.partial(callback, i))
    assert done.wait(60), f"{len(results)} of 16 answered"
    for i, (result, error) in results.items():
        assert error is None, error
        assert result.as_numpy("path")[0, 0].decode() == expected[i % 4]


# ---------------------------------------------------------------------------------------------
# Bad input: a clear INVALID_ARGUMENT (or a flagged result), and the server keeps serving


@pytest.mark.parametrize("inputs, message", [
    (lambda: [text_input([b""])], "text\\[0\\] is empty"),
    (lambda: [text_input([b"\xff\xfe caf\xe9"])], "not valid UTF-8 \\(byte 0xff at offset 0\\)"),
    (lambda: [text_input([b"ok", b"   "])], "text\\[1\\] is empty"),
    (lambda: [text_input(np.zeros((0, 1), dtype=object), shape=[0, 1])], "got 0"),
    (lambda: [text_input([b"bottle"], name="title")], "unexpected inference input 'title'"),
    (lambda: [text_input(np.array([[1.0]], dtype=np.float32), datatype="FP32")], "data-type is .FP32., but model .tagger. expects .BYTES."),
    (lambda: [text_input(np.array([[b"a", b"b"]], dtype=object), shape=[1, 2])], "unexpected shape for input .text. for model .tagger."),
], ids=["empty", "non-utf8", "blank-row", "batch-of-0", "wrong-name", "wrong-dtype", "wrong-shape"])
def test_bad_tagger_requests_get_invalid_argument_and_the_server_stays_up(client, inputs, message):
    with pytest.raises(InferenceServerException, match=message) as error:
        client.infer("tagger", inputs())
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    paths, _ = served_tags(client, TEXTS[:1])
    assert LEVEL_SEP in paths[0]


def test_a_100kb_text_is_served_truncated_like_in_process(served_repository, client):
    text = "steel water bottle " * 5400  # ~100 KB: the tokenizer keeps the first max_input_tokens tokens
    assert len(text.encode()) > 100_000
    tagger = Tagger.load(served_repository.tagger_checkpoint)
    paths, _ = served_tags(client, [text])
    assert paths == [LEVEL_SEP.join(tagger.predict([text])[0].label.path)]


def test_missing_or_corrupt_pictures_are_flagged_not_errors(client, pictures):
    images = [b"", b"\xff\xd8\xff\xe0 not a jpeg", b"GIF89a truncated"]
    result = client.infer("price", [text_input([b"leather wallet"] * 3), text_input(images, name="image")])
    assert result.as_numpy("has_image")[:, 0].tolist() == [False, False, False]
    assert len(set(result.as_numpy("price")[:, 0].tolist())) == 1  # no picture = the same text-only price
    with pytest.raises(InferenceServerException, match="text\\[0\\] is empty"):
        client.infer("price", [text_input([b""]), text_input([b""], name="image")])


def test_leaf_models_reject_wrong_shapes_and_keep_serving(served_repository, client):
    bad = grpcclient.InferInput("input_ids", [1, 4], "INT64")
    bad.set_data_from_numpy(np.ones((1, 4), np.int64))
    with pytest.raises(InferenceServerException):
        client.infer("tagger_encoder", [bad])  # attention_mask missing
    assert client.is_model_ready("tagger_encoder") and client.is_server_ready()


# ---------------------------------------------------------------------------------------------
# The GPU path's decode code (BLS to the leaves) run here on the CPU leaves


def test_bls_decoding_equals_in_process_decoding(served_repository, tmp_path, client):
    from shelfml.model_repository.server import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(served_repository.repo, repo, ignore=shutil.ignore_patterns("price*"))
    cpu = repo / "tagger" / "configs" / "cpu.pbtxt"
    config = read_config(cpu)
    config.parameters["runner"].string_value = "bls"  # the stock (GPU) config's runner
    del config.model_warmup[:]  # as in the stock config: BLS cannot run before the server is ready
    write_config(cpu, config)
    expected = served_tags(client, TEXTS)
    request = [text_input([t.encode() for t in TEXTS])]
    inprocess = client.infer("tagger", request)
    with TritonServer(repo, log_file=tmp_path / "triton.log") as server, \
            grpcclient.InferenceServerClient(server.grpc_url) as bls:
        assert served_tags(bls, TEXTS) == expected
        through_bls = bls.infer("tagger", request)
    for name in ("level_probability", "alternative_probability"):
        assert np.allclose(through_bls.as_numpy(name), inprocess.as_numpy(name), atol=1e-5)
    for name in ("backoff_path", "abstain", "alternatives"):
        assert through_bls.as_numpy(name).tolist() == inprocess.as_numpy(name).tolist()


# ---------------------------------------------------------------------------------------------
# Integrity: a corrupt file is refused at load, naming it


def _flip(path, count: int, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), count, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file, count", [("tagger_encoder/1/model.onnx", 200), ("price_regressor/1/model.onnx", 1000),
                                         ("tagger/1/assets/tokenizer.json", 1)], ids=["tagger-graph", "price-graph",
                                                                                     "tagger-asset"])
def test_a_corrupt_repository_file_is_refused_naming_it(served_repository, tmp_path, file, count):
    from shelfml.integrity import IntegrityError, verify
    from shelfml.model_repository.server import ModelLoadError, TritonServer

    repo = tmp_path / "repo"
    build_repository(repo, **served_repository.exports)
    _flip(repo / file, count)
    with pytest.raises(IntegrityError, match=f"{file} does not match its sha256 in repository.json"):
        verify(repo)  # what shelfml serve and the container entrypoint run before the server starts
    with pytest.raises(ModelLoadError, match=f"IntegrityError: .*{file} does not match its sha256"):
        TritonServer(repo, log_file=tmp_path / "triton.log").start(timeout_s=120)  # the model's own check


# ---------------------------------------------------------------------------------------------
# Pure pieces


@pytest.mark.parametrize("rows, message", [
    ([b""], "is empty"), ([b"\xc3\x28"], "not valid UTF-8"), ([b"x" * (1 << 20 + 1)], "the limit is"),
    ([b"ok", b"\x00\x00"], r"text\[1\] holds only control or zero-width"),
    (["\u200b\u200c \ufeff".encode()], "only control or zero-width"),
    ([b"y" * (1 << 20)] * 5, r"holds 5,242,880 bytes in 5 rows; the limit per request is 4,194,304"),
], ids=["empty", "bad-utf8", "too-big", "nul-only", "zero-width-only", "request-too-big"])
def test_decode_texts_names_the_row_and_the_problem(rows, message):
    with pytest.raises(RequestError, match=message):
        decode_texts(np.array(rows, dtype=object).reshape(-1, 1))


def test_run_isolated_fails_only_the_request_that_raises():
    calls = []

    def run(texts, pictures):
        calls.append(len(texts))
        if "boom" in texts:
            raise ValueError("bad row\nsecond line")
        return {"out": np.array([[t.upper() + p] for t, p in zip(texts, pictures)], dtype=object)}

    outputs, errors = run_isolated({0: (["a", "b"], ["1", "2"]), 2: (["boom"], [""]), 5: (["c"], ["3"])}, run)
    assert errors == {2: "ValueError: bad row"}
    assert outputs[0]["out"][:, 0].tolist() == ["A1", "B2"] and outputs[5]["out"][:, 0].tolist() == ["C3"]
    assert calls == [4, 2, 1, 1]  # the batch, then each request alone
    calls.clear()
    outputs, errors = run_isolated({3: (["x"], [""]), 1: (["y", "z"], ["", "!"])}, run)
    assert not errors and calls == [3] and outputs[1]["out"][:, 0].tolist() == ["Y", "Z!"]


def test_numpy_2_is_refused_at_model_load(monkeypatch):
    import numpy

    monkeypatch.setattr(numpy, "__version__", "2.1.0")
    with pytest.raises(RuntimeError, match="needs numpy<2"):
        check_numpy()


def test_assets_with_non_ascii_labels_load_under_an_ascii_locale(served_repository, tmp_path):
    """The python backend's stub may run with a C/ASCII locale: manifests are read as UTF-8 explicitly."""
    import json
    import os
    import subprocess
    import sys

    assets = tmp_path / "assets"
    shutil.copytree(served_repository.exports["tagger"] / "assets", assets)
    manifest = json.loads((assets / "shelfml.json").read_text(encoding="utf-8"))
    manifest["taxonomy"]["brands"].append("Café Crème ₹")
    (assets / "shelfml.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENC"))}
    code = (f"from shelfml.tagger import Tagger; t = Tagger.load({str(assets)!r}, weights=False); "
            f"print({ascii('Café Crème ₹')} in t.taxonomy.brands)")  # the command line itself stays ASCII
    done = subprocess.run([sys.executable, "-c", code], env={**env, "LC_ALL": "C", "PYTHONUTF8": "0"},
                          capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
