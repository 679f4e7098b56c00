"""The real tritonserver from the nvidia-pytriton wheel, started by ``TritonServer`` on tiny python-backend
repositories written here: readiness, a string round trip over gRPC, and every start-up failure named."""

from __future__ import annotations

import ipaddress
import re
import time
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from shelfml.model_repository import server as srv
from shelfml.model_repository.server import (ModelLoadError, PortInUseError, ServerError, ServerExitedError,
                                             TritonNotFoundError, TritonServer, free_port, port_in_use)

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

STRING_MODEL = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                "out", pb_utils.get_input_tensor_by_name(r, "text").as_numpy())]) for r in requests]
"""
RAISING_MODEL = """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("tokenizer file missing: /nowhere/tokenizer.json")

        def execute(self, requests):
            return []
"""


def config(name: str, backend: str) -> str:
    return textwrap.dedent(f"""
        name: "{name}"
        backend: "{backend}"
        max_batch_size: 8
        input [ {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }} ]
        output [ {{ name: "out" data_type: TYPE_STRING dims: [ 1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    """)


def write_model(repo: Path, name: str, source: str, stock_backend: str = "onnxruntime") -> None:
    """Like the project's leaves: a stock config.pbtxt for the GPU container and configs/cpu.pbtxt (python)."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "configs").mkdir()
    (repo / name / "config.pbtxt").write_text(config(name, stock_backend))
    (repo / name / "configs" / "cpu.pbtxt").write_text(config(name, "python"))
    (repo / name / "1" / "model.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "echo", STRING_MODEL)
    return repo


@pytest.fixture(scope="module")
def server(echo_repo):
    with TritonServer(echo_repo) as s:
        yield s


def test_ready_and_string_round_trip(server):
    assert urllib.request.urlopen(f"{server.endpoints['http']}/v2/health/ready", timeout=5).status == 200
    assert set(server.endpoints) == {"grpc", "http", "metrics"}
    assert server.repository_index() == [{"name": "echo", "version": "1", "state": "READY"}]
    texts = ["Green Harbor shampoo 500 ml", "", "café — 日本語 ✓", "x" * 10_000]
    client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready() and client.is_model_ready("echo")
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        inp = tritonclient_grpc.InferInput("text", list(array.shape), "BYTES")
        inp.set_data_from_numpy(array)
        out = client.infer("echo", [inp]).as_numpy("out")
    finally:
        client.close()
    assert [v.decode("utf-8") for v in out[:, 0]] == texts


def _listening(port: int) -> set[str]:
    """The local addresses a TCP socket listens on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
            ip = ipaddress.ip_address(raw)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC binds ::ffff:127.0.0.1
    return found


def test_every_endpoint_listens_on_loopback_only(server):
    for kind, port in server.ports.items():
        assert _listening(port) == {"127.0.0.1"}, kind


def _http(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(f"{server.endpoints['http']}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/v2/logging", b'{"log_verbose_level": 1}'), ("GET", "/v2/logging", None),
    ("POST", "/v2/repository/index", b"{}"), ("GET", "/v2/models/echo/stats", None),
    ("GET", "/v2/trace/setting", None)], ids=["set-log-level", "log-settings", "repository", "statistics", "trace"])
def test_restricted_apis_need_the_admin_header(server, method, path, body):
    assert _http(server, method, path, body=body) == 403
    assert _http(server, method, path, server.admin_headers, body=body) == 200
    assert _http(server, method, path, {srv.ADMIN_HEADER: "a guess"}, body=body) == 403


def test_restricted_grpc_protocols_need_the_admin_header(server):
    from tritonclient.utils import InferenceServerException

    client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="This protocol is restricted"):
            client.get_inference_statistics("echo")
        assert client.get_inference_statistics("echo", headers=server.grpc_admin_headers)
        assert client.is_model_ready("echo") and client.get_model_config("echo")  # open: inference, health, config
    finally:
        client.close()


def test_a_taken_port_is_refused_before_start(echo_repo, server):
    with pytest.raises(PortInUseError, match=rf"grpc port {server.grpc_port} is already in use"):
        TritonServer(echo_repo, grpc_port=server.grpc_port).start()


def test_a_taken_port_is_named_from_the_server_log(echo_repo, tmp_path, monkeypatch):
    """The port taken between our check and the server's bind: the server exits and its log names the port."""
    monkeypatch.setattr(srv, "port_in_use", lambda port: False)
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        s = TritonServer(echo_repo, http_port=port, log_file=tmp_path / "server.log")
        with pytest.raises(PortInUseError, match=rf"HTTP port {port} is already in use") as err:
            s.start()
    assert err.value.port == port and not s.running()


@pytest.mark.parametrize("models, config_name, extra, failing, reason", [
    ({"echo": STRING_MODEL, "broken": RAISING_MODEL}, "cpu", (), "broken", "tokenizer file missing"),
    ({"echo": STRING_MODEL, "broken": RAISING_MODEL}, "cpu", ("--exit-on-error=false",), "broken",
     "tokenizer file missing"),
    ({"echo": STRING_MODEL}, "", (), "echo", "unable to find backend library for backend 'onnxruntime'"),
], ids=["initialize-raises", "initialize-raises-server-stays-up", "stock-config-without-its-backend"])
def test_a_model_that_fails_to_load_is_named(tmp_path, models, config_name, extra, failing, reason):
    for name, source in models.items():
        write_model(tmp_path / "repo", name, source)
    s = TritonServer(tmp_path / "repo", config_name=config_name, extra_args=extra, log_file=tmp_path / "server.log")
    with pytest.raises(ModelLoadError, match=rf"(?s){failing}: .*{reason}") as err:
        s.start(timeout_s=60)
    assert set(err.value.models) == {failing}
    assert not s.running()


def test_a_server_that_exits_early_shows_its_error(echo_repo, tmp_path):
    s = TritonServer(echo_repo, extra_args=("--no-such-flag",), log_file=tmp_path / "server.log")
    with pytest.raises(ServerExitedError, match=r"(?s)exited with code \d+ before it was ready.*"
                                                r"unrecognized option '--no-such-flag'"):
        s.start()


@pytest.mark.parametrize("break_it, message", [
    (lambda mp, tmp: mp.setattr(srv, "_dist_dir", lambda: tmp), "no executable tritonserver .*nvidia-pytriton"),
    (lambda mp, tmp: mp.setattr(srv.importlib.util, "find_spec", lambda name: None),
     "'nvidia-pytriton' package, which is not installed"),
], ids=["binary-missing", "package-missing"])
def test_a_missing_binary_names_the_package(echo_repo, tmp_path, monkeypatch, break_it, message):
    break_it(monkeypatch, tmp_path)
    with pytest.raises(TritonNotFoundError, match=message):
        TritonServer(echo_repo).start()


def test_numpy_2_is_refused(echo_repo, monkeypatch):
    monkeypatch.setattr(np, "__version__", "2.1.0")
    with pytest.raises(ServerError, match=r"numpy 2\.1\.0 .*install 'numpy<2'"):
        TritonServer(echo_repo).start()


def test_bad_arguments_are_refused(echo_repo, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        TritonServer(tmp_path / "nowhere").start()
    port = free_port()
    with pytest.raises(ServerError, match="ports must differ"):
        TritonServer(echo_repo, http_port=port, grpc_port=port).start()


def test_prepare_backends_is_idempotent():
    first, second = srv.prepare_backends(), srv.prepare_backends()
    stub = first / "python" / "triton_python_backend_stub"
    assert first == second and stub.is_file() and os.access(stub, os.X_OK)


def test_stop_ends_the_process_group_and_frees_the_ports(echo_repo):
    with TritonServer(echo_repo) as s:
        pid, ports = s.process.pid, s.ports
        assert all(port_in_use(p) for p in ports.values())
    assert s.process.returncode == 0 and not s.running()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the server nor a python backend stub is left
    assert not any(port_in_use(p) for p in ports.values())
    assert s.stop() == 0  # idempotent


SERVE = "import sys; from shelfml.model_repository.server import serve; sys.exit(serve(*sys.argv[1:2], *map(int, sys.argv[2:])))"


def test_serve_prints_endpoints_and_stops_on_sigterm(echo_repo):
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(echo_repo), *map(str, ports)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        printed = "".join(lines)
        assert f"127.0.0.1:{ports[1]}" in printed and f"http://127.0.0.1:{ports[0]}" in printed
        assert "127.0.0.1 only" in printed and "shelfml-admin-key" in printed
        assert "model echo" in printed and "READY" in printed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        errors = proc.stderr.read()
        assert "stopped (exit code 0)" in errors and "has no repository.json (not built by shelfml)" in errors
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(port_in_use(p) for p in ports)


def test_serve_on_a_taken_port_exits_2_with_the_reason(echo_repo):
    with socket.socket() as holder:
        holder.bind(("", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-c", SERVE, str(echo_repo), str(free_port()), str(port),
                               str(free_port())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"grpc port {port} is already in use" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Overload and faults, on the real server, through the served models' own execute() (shelfml.serving)

SLOW_MODEL = """
    import json, time
    from pathlib import Path

    import numpy as np
    import triton_python_backend_utils as pb_utils

    from shelfml.monitoring import ServedMetrics
    from shelfml.serving import RequestError, decode_texts, execute


    class TritonPythonModel:
        def initialize(self, args):
            self.log = Path(args["model_repository"]) / "executed.jsonl"
            self.metrics = ServedMetrics(pb_utils, args["model_name"], args["model_version"])

        def parse(self, request):
            return (decode_texts(pb_utils.get_input_tensor_by_name(request, "text").as_numpy()),)

        def run(self, texts):
            with open(self.log, "a") as f:
                f.write(json.dumps(texts) + "\\n")
            if "boom" in texts:  # the injected fault
                raise RuntimeError("injected fault")
            time.sleep(max([float(t.split(":")[1]) for t in texts if t.startswith("sleep:")], default=0))
            return {"out": np.array([[t.upper().encode()] for t in texts], dtype=object)}

        def execute(self, requests):
            return execute(pb_utils, requests, self.parse, self.run, {"out": np.object_}, self.metrics)
"""
SLOW_CONFIG = """
    name: "slow"
    backend: "python"
    max_batch_size: 8
    input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
    output [ { name: "out" data_type: TYPE_STRING dims: [ 1 ] } ]
    instance_group [ { kind: KIND_CPU count: 1 } ]
    dynamic_batching {
      max_queue_delay_microseconds: 300000
      default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 30000000
                             allow_timeout_override: true max_queue_size: 4 }
    }
"""


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow")
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "config.pbtxt").write_text(textwrap.dedent(SLOW_CONFIG))
    (repo / "slow" / "1" / "model.py").write_text(textwrap.dedent(SLOW_MODEL))
    with TritonServer(repo, config_name="") as s:
        yield s, repo / "slow" / "executed.jsonl"


def _infer(url: str, text: str, **kw):
    """(status, output) of one request; status None when it was answered."""
    from tritonclient.utils import InferenceServerException

    client = tritonclient_grpc.InferenceServerClient(url)
    array = np.array([[text.encode()]], dtype=object)
    inp = tritonclient_grpc.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(array)
    try:
        return None, client.infer("slow", [inp], **kw).as_numpy("out")[0, 0].decode()
    except InferenceServerException as e:
        return str(e.status()).rsplit(".", 1)[-1], e.message()
    finally:
        client.close()


def _together(url: str, calls: list[tuple[str, dict]], stagger_s: float = 0.0) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = []
        for text, kw in calls:
            futures.append(pool.submit(_infer, url, text, **kw))
            time.sleep(stagger_s)
        return [f.result() for f in futures]


def test_a_fault_in_one_request_fails_it_alone(slow_server):
    server, _ = slow_server
    results = _together(server.grpc_url, [("boom", {}), ("steel bottle", {}), ("shampoo", {})])
    assert results[0][0] == "INTERNAL" and "injected fault" in results[0][1]
    assert results[1:] == [(None, "STEEL BOTTLE"), (None, "SHAMPOO")]


def test_a_full_queue_sheds_at_once_and_the_admitted_are_answered(slow_server):
    server, _ = slow_server
    results = _together(server.grpc_url, [("sleep:1.5", {})] + [(f"row {i}", {}) for i in range(15)], 0.05)
    shed = [r for r in results if r[0] == "UNAVAILABLE"]
    assert shed and all("Exceeds maximum queue size" in m for _, m in shed)
    assert all(r[0] is None for r in results if r not in shed)


def test_a_request_past_its_deadline_in_the_queue_is_never_computed(slow_server):
    server, executed = slow_server
    results = _together(server.grpc_url, [("sleep:1.5", {}), ("late one", {"timeout": 200_000})], 0.6)
    assert results[0] == (None, "SLEEP:1.5")
    assert results[1][0] == "UNAVAILABLE" and "Request timeout expired" in results[1][1]
    time.sleep(0.5)
    assert not any("late one" in line for line in executed.read_text().splitlines())


def test_a_request_whose_client_left_is_never_computed(slow_server):
    """No server-side timeout, only the client's own: gRPC cancels the call; the server drops it from the queue
    (or, had it reached the model, execute() answers it CANCELLED unrun)."""
    server, executed = slow_server
    results = _together(server.grpc_url, [("sleep:1.5", {}), ("gone client", {"client_timeout": 0.3})], 0.6)
    assert results[0] == (None, "SLEEP:1.5") and results[1][0] == "DEADLINE_EXCEEDED"
    time.sleep(1.5)
    assert not any("gone client" in line for line in executed.read_text().splitlines())
    time.sleep(2.5)  # Triton refreshes its own counters every 2 s
    text = urllib.request.urlopen(server.endpoints["metrics"], timeout=5).read().decode()
    dropped = re.search(r'nv_inference_request_failure\{model="slow",reason="CANCELED",version="1"\} [1-9]', text)
    assert dropped or re.search(r'shelfml_requests_total\{model="slow",outcome="cancelled",version="1"\} [1-9]', text)


def test_custom_metrics_count_outcomes_rows_and_stages(slow_server):
    """Errors are counted as errors (Triton's own nv_inference_request_success counts them as successes), and a
    request refused for its deadline in the queue shows in Triton's failure count (queue-full refusals, measured
    with 2.51, are in no server metric: the client sees them as UNAVAILABLE)."""
    server, _ = slow_server
    _together(server.grpc_url, [("boom", {}), ("metrics probe", {})])
    _together(server.grpc_url, [("sleep:1", {}), ("late", {"timeout": 100_000})], 0.6)
    time.sleep(2.5)  # Triton refreshes its own counters every 2 s
    text = urllib.request.urlopen(server.endpoints["metrics"], timeout=5).read().decode()
    assert re.search(r'shelfml_requests_total\{model="slow",outcome="error",version="1"\} [1-9]', text)
    assert re.search(r'shelfml_requests_total\{model="slow",outcome="ok",version="1"\} [1-9]', text)
    assert re.search(r'shelfml_rows_total\{model="slow",outcome="ok",version="1"\} [1-9]', text)
    assert re.search(r'shelfml_rows_total\{model="slow",outcome="error",version="1"\} [1-9]', text)
    assert re.search(r'shelfml_stage_seconds_count\{model="slow",stage="infer",version="1"\} [1-9]', text)
    assert re.search(r'nv_inference_request_failure\{model="slow",reason="REJECTED",version="1"\} [1-9]', text)
