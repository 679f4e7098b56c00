"""Run the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel on a plain model repository.

Only the binary and its python backend are used (not PyTriton's decorator API). Start-up needs three things
measured on this machine: the wheel's python backend stub copied into ``backends/python/``, this environment
first on PATH (the stub imports numpy and the models' dependencies from the python it finds there), and
numpy < 2 in that environment (numpy 2 silently corrupts the python backend's tensors).

:class:`TritonServer` starts the process on explicit ports, waits for strict readiness and stops it with SIGTERM
then SIGKILL; every way start-up can fail becomes a :class:`ServerError` subclass naming the cause.
:func:`serve` is the blocking ``shelfml serve REPO`` command.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

PACKAGE = "nvidia-pytriton"  # the PyPI wheel holding the binary
LOOPBACK = "127.0.0.1"  # where every endpoint binds unless --host says otherwise
ADMIN_HEADER = "shelfml-admin-key"  # the header the restricted APIs require (value: the operator's key)
RESTRICTED_APIS = ("logging", "model-repository", "trace", "statistics")  # refused without the header
EXIT_TIMEOUT_S = 60  # --exit-timeout-secs: longer than the worst legal request, so SIGTERM drains it
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
LOG_TAIL_LINES = 40  # lines of the server log quoted in an error
CACHE_MB = 64  # Triton's local response cache (--cache-config local,size=...); the models enable it in config.pbtxt
LOAD_TIMEOUT_S = 300.0  # one model load request (a roll-out): loading a version reads and warms its graphs

# Triton's own log lines, matched to name the cause of a failed start.
_PORT_TAKEN = re.compile(r"failed to start (\w+) service: .*?Socket '([^']*)' already in use")
_MODEL_FAILED = re.compile(r"failed to load '([^']+)' version \d+: (.*?)\"?$", re.M)
_MODEL_FAILED_SHORT = re.compile(r"failed to load '([^']+)'\"?$", re.M)
_POLL_FAILED = re.compile(r"Poll failed for model directory '([^']+)': (.*?)\"?$", re.M)


def grpc_admin_headers(key: str) -> dict[str, str]:
    """gRPC metadata opening the restricted protocols for the operator's ``key``."""
    return {f"triton-grpc-protocol-{ADMIN_HEADER}": key}


class ServerError(RuntimeError):
    """tritonserver could not be started or stopped; the message names the cause."""


class TritonNotFoundError(ServerError):
    pass


class PortInUseError(ServerError):
    def __init__(self, msg: str, port: int):
        super().__init__(msg)
        self.port = port


class ModelLoadError(ServerError):
    def __init__(self, msg: str, models: dict[str, str]):
        super().__init__(msg)
        self.models = models  # model name -> the server's reason


class ServerExitedError(ServerError):
    pass


# ---------------------------------------------------------------------------------------------
# The binary and its python backend


def _dist_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        raise TritonNotFoundError(f"the Triton server binary comes from the {PACKAGE!r} package, which is not "
                                  f"installed in {sys.prefix}: pip install '{PACKAGE}==0.7.0'")
    return Path(spec.origin).parent / "tritonserver"


def find_tritonserver() -> Path:
    """The ``tritonserver`` executable inside the ``nvidia-pytriton`` wheel."""
    binary = _dist_dir() / "bin" / "tritonserver"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise TritonNotFoundError(f"no executable tritonserver at {binary}: the {PACKAGE!r} wheel is incomplete "
                                  f"or not built for this platform (reinstall {PACKAGE}==0.7.0)")
    return binary


def _libs_dir() -> Path:
    return _dist_dir().parent.parent / "nvidia_pytriton.libs"


def prepare_backends() -> Path:
    """The backend directory with the python stub for this interpreter in place (copied once, idempotent)."""
    dist = _dist_dir()
    backends = dist / "backends"
    stub = dist / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise TritonNotFoundError(f"{PACKAGE} has no python backend stub for Python {PYTHON_VERSION} "
                                  f"(it ships {available}); use one of those Python versions")
    target = backends / "python" / stub.name
    if target.is_file() and target.stat().st_size == stub.stat().st_size:
        return backends
    try:
        tmp = target.with_name(f".{stub.name}.{os.getpid()}")
        shutil.copy2(stub, tmp)
        os.replace(tmp, target)  # atomic: two servers starting at once never see half a stub
        return backends
    except PermissionError:  # a read-only site-packages: a private copy of the backends instead
        private = Path(tempfile.gettempdir()) / f"shelfml-triton-backends-{os.getuid()}"
        if not (private / "python" / stub.name).is_file():
            shutil.copytree(backends, private, dirs_exist_ok=True)
            shutil.copy2(stub, private / "python" / stub.name)
        return private


def _server_env() -> dict[str, str]:
    """This environment first on PATH (the stub's python), and the wheel's bundled libraries."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise ServerError(f"numpy {numpy.__version__} in {sys.prefix}: Triton's python backend corrupts tensors "
                          "with numpy 2; install 'numpy<2'")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env["PYTHONUTF8"] = "1"  # the stubs' python must not decode manifests (taxonomies) with an ASCII locale
    # The stub links libpython3.11.so.1.0: make it the one of this interpreter (the system's may be an older
    # 3.11 whose symbols this interpreter's extension modules lack, e.g. _ssl needing _PyModule_Add).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    own = libdir if Path(libdir, sysconfig.get_config_var("INSTSONAME") or "-").is_file() else ""
    libs = [str(_libs_dir()), own, env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return env


# ---------------------------------------------------------------------------------------------
# Ports


def free_port() -> int:
    """A TCP port nobody listens on now (the OS's pick; another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _pick_ports(given: Sequence[int | None]) -> list[int]:
    """The given ports, each None replaced by a free port none of the others uses (the OS may repeat one)."""
    ports = list(given)
    for i in range(len(ports)):
        while not ports[i]:
            port = free_port()
            if port not in ports:
                ports[i] = port
    return ports


def port_in_use(port: int) -> bool:
    """True when a listening socket holds ``port`` (SO_REUSEADDR, as servers bind: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


# ---------------------------------------------------------------------------------------------
# The server process


_ERROR_LINE = re.compile(r"^E\d{4} |unrecognized option|^error:", re.I)


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The log's error lines (Triton prints usage after a bad flag, burying it), then its last lines."""
    all_lines = text.rstrip().splitlines()
    errors = [line for line in all_lines if _ERROR_LINE.search(line)][-10:]
    tail = all_lines[-lines:]
    head = [line for line in errors if line not in tail]
    return "\n".join((["errors:", *head, "last lines:"] if head else []) + tail)


def failed_models(log: str) -> dict[str, str]:
    """Model name -> reason, from the server log's load failures (the first line of each reason)."""
    models: dict[str, str] = {}
    for rx in (_MODEL_FAILED, _POLL_FAILED):
        for name, reason in rx.findall(log):
            models.setdefault(name, reason.replace("\\n", "\n").strip().splitlines()[0])
    for name in _MODEL_FAILED_SHORT.findall(log):
        models.setdefault(name, "failed to load (see the server log)")
    return models


class TritonServer:
    """A running ``tritonserver`` on ``repo``; a context manager (start on enter, stop on exit).

    Ports default to free ones. ``config_name`` is ``--model-config-name``: each leaf's ``configs/<name>.pbtxt``
    replaces its ``config.pbtxt`` ("cpu": the python-backend ONNX Runtime configs; "" for the stock configs).
    The log (stdout and stderr) goes to ``log_file``, or to a temporary file removed after a clean stop.
    """

    def __init__(self, repo: str | os.PathLike, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, config_name: str = "cpu", log_file: str | os.PathLike | None = None,
                 extra_args: Sequence[str] = (), host: str = LOOPBACK, admin_key: str | None = None,
                 cache_mb: int = CACHE_MB):
        """``host``: the address every endpoint binds to (loopback by default; "0.0.0.0" for all interfaces).
        ``admin_key``: the value of the ``shelfml-admin-key`` header the restricted APIs (logging, repository,
        trace, statistics) require; default ``$SHELFML_ADMIN_KEY``, else a random key only this object knows.
        ``cache_mb``: the response cache's size (0: none). Models are loaded explicitly (every model at start):
        :meth:`load_models` (behind the restricted repository API) rolls a new version out without a restart."""
        if cache_mb < 0:
            raise ValueError(f"the response cache size must be >= 0 MB, got {cache_mb}")
        self.cache_mb = cache_mb
        self.repo = Path(repo).resolve()
        self.http_port, self.grpc_port, self.metrics_port = _pick_ports((http_port, grpc_port, metrics_port))
        self.config_name = config_name
        self.extra_args = tuple(extra_args)
        self.host = host
        self.admin_key = admin_key or os.environ.get("SHELFML_ADMIN_KEY") or secrets.token_urlsafe(24)
        self._own_log = log_file is None
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self._stopped = False

    # -- addresses

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    @property
    def local_host(self) -> str:
        """Where a client on this machine reaches it (loopback when bound to every interface)."""
        return LOOPBACK if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.local_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.local_host}:{self.http_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """HTTP headers that open the restricted APIs (statistics, repository index, logging, trace)."""
        return {ADMIN_HEADER: self.admin_key}

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The same over gRPC (Triton prefixes the key it expects with ``triton-grpc-protocol-``)."""
        return grpc_admin_headers(self.admin_key)

    @property
    def endpoints(self) -> dict[str, str]:
        return {"grpc": self.grpc_url, "http": f"http://{self.http_url}",
                "metrics": f"http://{self.local_host}:{self.metrics_port}/metrics"}

    def command(self) -> list[str]:
        restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        cmd = [str(find_tritonserver()), f"--model-repository={self.repo}",
               f"--backend-directory={prepare_backends()}", f"--http-port={self.http_port}",
               f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
               f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
               f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
               f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--model-control-mode=explicit", "--load-model=*",
               "--strict-readiness=true"]
        if self.cache_mb:
            cmd += [f"--cache-config=local,size={self.cache_mb * 1024 * 1024}",
                    f"--cache-directory={_dist_dir() / 'caches'}"]  # the wheel's libtritoncache_local.so
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        return cmd + list(self.extra_args)

    def log(self) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    # -- lifecycle

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        """Start the process and wait until the server and every model are ready; raise a ServerError if not."""
        assert self.process is None, "this TritonServer was already started"
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {self.repo} is not a directory")
        if len(set(self.ports.values())) != 3:
            raise ServerError(f"the HTTP, gRPC and metrics ports must differ, got {self.ports}")
        for kind, port in self.ports.items():
            if port_in_use(port):
                raise PortInUseError(f"{kind} port {port} is already in use: stop what listens there or pick "
                                     f"another port (--{kind}-port)", port)
        cmd, env = self.command(), _server_env()
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "wb") as log:
            # Its own session: Ctrl-C in a terminal reaches us, and we stop the server (and its stubs) in order.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._exit_error()
            status = self._get("/v2/health/ready")
            if status == 200:
                return
            if status is not None:  # it answers (models are loaded before the endpoints open) but is not ready
                unavailable = self._unavailable()
                if unavailable:
                    raise self._model_error(unavailable)
            time.sleep(0.2)
        unavailable = self._unavailable()
        if unavailable:
            raise self._model_error(unavailable)
        raise ServerError(f"tritonserver did not become ready within {timeout_s:.0f} s; log {self.log_file}:\n"
                          + _tail(self.log()))

    def _unavailable(self) -> dict[str, str]:
        """Models the index reports UNAVAILABLE (with strict readiness, what keeps the server not ready)."""
        return {m["name"]: m.get("reason") or m["state"] for m in self.repository_index()
                if m.get("state") == "UNAVAILABLE"}

    def _exit_error(self) -> ServerError:
        code, log = self.process.returncode, self.log()
        taken = _PORT_TAKEN.search(log)
        if taken:
            port = int(taken.group(2).rsplit(":", 1)[-1])
            return PortInUseError(f"{taken.group(1)} port {port} is already in use (tritonserver could not bind "
                                  f"{taken.group(2)}): stop what listens there or pick another port", port)
        models = failed_models(log)
        if models:
            return self._model_error(models)
        return ServerExitedError(f"tritonserver exited with code {code} before it was ready; from its log "
                                 f"{self.log_file}:\n{_tail(log)}")

    def _model_error(self, models: dict[str, str]) -> ModelLoadError:
        lines = "\n".join(f"  {name}: {reason}" for name, reason in sorted(models.items()))
        return ModelLoadError(f"{len(models)} model(s) of {self.repo} failed to load:\n{lines}\n"
                              f"(full server log: {self.log_file})", models)

    def _get(self, path: str, data: bytes | None = None) -> int | None:
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data, headers=self.admin_headers)
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                self._last_body = r.read()
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return None

    def repository_index(self) -> list[dict]:
        """The server's model index (name, version, state, reason); [] when the server does not answer."""
        if self._get("/v2/repository/index", data=b"{}") != 200:
            return []
        return json.loads(self._last_body)

    def load_models(self, names: Sequence[str], timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """(Re)load ``names`` in order: each serves its newest version(s) on disk once loaded; until then the version
        loaded before keeps answering (no request fails). ServerError with the server's reason if a load fails
        (the version loaded before stays)."""
        load_models(self.http_url, names, self.admin_key, timeout_s)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = EXIT_TIMEOUT_S + 10.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests and unloads models), SIGKILL after ``timeout_s``.

        Returns the exit code (None when never started). The stubs die with the server's process group.
        """
        if self.process is None or self._stopped:
            return None if self.process is None else self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait()
        self._kill_group()  # any python backend stub left behind (the group outlives its reaped leader)
        if self._own_log and self.log_file is not None and self.process.returncode == 0:
            self.log_file.unlink(missing_ok=True)
        return self.process.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load_models(http_url: str, names: Sequence[str], admin_key: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """POST ``/v2/repository/models/NAME/load`` for each of ``names`` (the restricted repository API: the
    operator's admin key) on a server in explicit model-control mode."""
    for name in names:
        request = urllib.request.Request(f"http://{http_url.removeprefix('http://')}/v2/repository/models/{name}/load",
                                         data=b"{}", headers={ADMIN_HEADER: admin_key}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                pass
        except urllib.error.HTTPError as e:
            reason = e.read().decode(errors="replace")
            raise ServerError(f"loading model {name!r} on {http_url} failed (HTTP {e.code}): {reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServerError(f"loading model {name!r}: the server at {http_url} did not answer ({e})") from None


# ---------------------------------------------------------------------------------------------
# ``shelfml serve REPO``


def _endpoint_table(server: TritonServer):
    """What ``shelfml serve`` prints: where each endpoint listens, the restricted APIs, every model's state."""
    from rich.table import Table

    table = Table(title=f"tritonserver {server.repo}", show_header=True)
    for column in ("endpoint", "address", "listening on"):
        table.add_column(column)
    bound = "every interface" if server.host in ("0.0.0.0", "", "::") else f"{server.host} only"
    for name, address in server.endpoints.items():
        table.add_row(name, address, bound)
    table.add_row("restricted", ", ".join(RESTRICTED_APIS), f"header {ADMIN_HEADER}")
    for m in server.repository_index():
        table.add_row(f"model {m['name']}", f"v{m.get('version', '?')} {m.get('state', '?')}")
    return table


def serve(repo: str | os.PathLike, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          config_name: str = "cpu", log_file: str | os.PathLike | None = None, timeout_s: float = 300.0,
          host: str = LOOPBACK, admin_key: str | None = None, cache_mb: int = CACHE_MB) -> int:
    """Check the repository's files against repository.json, start the server, print its endpoints and
    models, block until Ctrl-C/SIGTERM, stop cleanly.

    Returns the exit code: 0 after a requested stop, 2 when it cannot start for a named reason (port taken,
    model failed to load, a corrupt file, binary or repository missing), 1 when the server died on its own.
    """
    from rich.console import Console

    from shelfml.integrity import REPOSITORY_MANIFEST, IntegrityError, verify

    out, err = Console(), Console(stderr=True)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = TritonServer(repo, http_port, grpc_port, metrics_port, config_name=config_name, log_file=log_file,
                          host=host, admin_key=admin_key, cache_mb=cache_mb)
    try:
        if server.repo.is_dir() and not list(server.repo.glob("*/config.pbtxt")):
            hint = " (it is a checkpoint: `shelfml export CKPT --out DIR --repository REPO`)" if (
                server.repo / "shelfml.json").is_file() else ""
            raise FileNotFoundError(f"{server.repo} is not a model repository: no MODEL/config.pbtxt in it{hint}")
        if (server.repo / REPOSITORY_MANIFEST).is_file():  # every leaf, also those a stock backend loads
            err.print(f"checked {verify(server.repo)} files against {REPOSITORY_MANIFEST}")
        else:
            err.print(f"warning: {server.repo} has no {REPOSITORY_MANIFEST} (not built by shelfml): its files are "
                      "not checked", markup=False, highlight=False)
        with err.status(f"starting tritonserver on {server.repo} ..."):
            server.start(timeout_s)
        out.print(_endpoint_table(server))
        out.print(f"log: {server.log_file}   (Ctrl-C stops)")
        while not stop.wait(0.5):
            if not server.running():
                err.print(f"[red]tritonserver exited with code {server.process.returncode}[/red]; last lines:\n"
                          + _tail(server.log()), markup=True, highlight=False)
                return 1
        err.print("stopping tritonserver ...")
        code = server.stop()
        err.print(f"stopped (exit code {code})")
        return 0
    except (ServerError, FileNotFoundError, IntegrityError) as e:
        err.print(f"shelfml: error: {e}", markup=False, highlight=False, soft_wrap=True)
        return 1 if isinstance(e, ServerExitedError) else 2
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
