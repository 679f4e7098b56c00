"""Triton's ``perf_analyzer`` against the served repository, with an input-data JSON the bench writes.

No pip package ships a binary that runs here except the ``tritonclient==2.51.0`` wheel (the version of the
server in nvidia-pytriton 0.7.0): its ``tritonclient-2.51.0.data/data/bin/perf_analyzer`` needs
``libb64.so.0d`` and ``libcudart.so.12``, which the server wheel's ``nvidia_pytriton.libs`` folder holds under
hashed names. :func:`find_perf_analyzer` downloads the wheel once (``pip download --no-deps``; the project's
own tritonclient is left alone), extracts the binary into a cache folder and links the two libraries there.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "2.51.0"
WHEEL_BINARY = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot be found, fetched or run here; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("SHELFML_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "shelfml")
    return Path(root) / f"perf_analyzer-{VERSION}"


def _libs_dir() -> Path:
    from shelfml.model_repository.server import _libs_dir

    return _libs_dir()


def find_perf_analyzer(cache: Path | None = None, download: bool = True) -> tuple[Path, dict[str, str]]:
    """The binary and the environment it runs in (LD_LIBRARY_PATH with the linked libraries)."""
    cache = cache or cache_dir()
    binary, links = cache / "bin" / "perf_analyzer", cache / "lib"
    if not binary.is_file():
        if not download:
            raise PerfAnalyzerUnavailable(f"no perf_analyzer in {cache} and downloading is off")
        _fetch(binary)
    libs = _libs_dir()
    links.mkdir(parents=True, exist_ok=True)
    for name, pattern in LIBRARIES.items():
        found = sorted(libs.glob(pattern))
        if not found:
            raise PerfAnalyzerUnavailable(f"{libs} has no {pattern} to provide {name} (is nvidia-pytriton 0.7.0 "
                                          "installed?)")
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([str(links), str(libs),
                                                            os.environ.get("LD_LIBRARY_PATH", "")]))
    probe = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True)
    if VERSION not in probe.stdout + probe.stderr:
        raise PerfAnalyzerUnavailable(f"{binary} --version did not run: {(probe.stderr or probe.stdout)[-300:]}")
    return binary, env


def _fetch(binary: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"tritonclient=={VERSION}", "--no-deps",
               "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", tmp, "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob(f"tritonclient-{VERSION}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise PerfAnalyzerUnavailable(f"pip download tritonclient=={VERSION} failed: {done.stderr[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if WHEEL_BINARY not in wheel.namelist():
                raise PerfAnalyzerUnavailable(f"{wheels[0].name} has no {WHEEL_BINARY}")
            binary.parent.mkdir(parents=True, exist_ok=True)
            partial = binary.with_suffix(".part")
            partial.write_bytes(wheel.read(WHEEL_BINARY))
            partial.chmod(0o755)
            os.replace(partial, binary)


def write_input_data(path: Path, texts: list[str], input_name: str = "text") -> Path:
    """perf_analyzer's --input-data JSON: one single-text request per entry (the BYTES input as a string)."""
    path.write_text(json.dumps({"data": [{input_name: [t]} for t in texts]}, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def run_perf_analyzer(url: str, model: str, input_data: Path, concurrency: tuple[int, ...], out_dir: Path,
                      measurement_ms: int = 3000, binary: Path | None = None, env: dict | None = None,
                      headers: dict[str, str] | None = None) -> dict:
    """One perf_analyzer run per concurrency level (gRPC, batch 1); its CSV figures per level. ``headers``: gRPC
    metadata for every request (``-H``; the operator's key for a server whose model APIs are restricted; the
    recorded command shows the names only)."""
    extra = [a for name, value in (headers or {}).items() for a in ("-H", f"{name}:{value}")]
    if binary is None:
        binary, env = find_perf_analyzer()
    levels = {}
    for c in concurrency:
        report = out_dir / f"perf_analyzer_c{c}.csv"
        cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "-b", "1", "--input-data", str(input_data),
               "--concurrency-range", str(c), "--measurement-interval", str(measurement_ms),
               "--stability-percentage", "50", "--max-trials", "4", "-f", str(report)]
        done = subprocess.run(cmd + extra, env=env, capture_output=True, text=True, timeout=300)
        (out_dir / f"perf_analyzer_c{c}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0 or not report.is_file():
            levels[str(c)] = {"status": "failed", "returncode": done.returncode,
                              "reason": (done.stderr or done.stdout).strip()[-400:]}
            continue
        try:
            row = next(csv.DictReader(io.StringIO(report.read_text(encoding="utf-8"))))
            levels[str(c)] = {"status": "measured", "throughput_items_s": float(row["Inferences/Second"]),
                              **{f"{k}_ms": int(row[f"{k} latency"]) / 1e3 for k in ("p50", "p90", "p99")},
                              # its CSV splits the mean into phases (us): client, network, queue, compute
                              "phases_us": {k: int(v) for k, v in row.items() if k.startswith(("Client", "Network",
                                                                                                "Server"))},
                              "csv": str(report)}
        except (StopIteration, KeyError, ValueError) as e:
            levels[str(c)] = {"status": "failed", "reason": f"unexpected CSV in {report}: {e!r}"}
    shown = [a if a == "-H" else a.split(":", 1)[0] + ":<key>" for a in extra]
    return {"status": "measured", "binary": str(binary), "version": VERSION, "command": " ".join(cmd + shown),
            "input_data": str(input_data), "levels": levels}
