"""Checkpoint directories: ``save_pretrained`` files (safetensors) + a ``shelfml.json`` manifest.

The manifest says what the directory holds (task, label format, taxonomy, split and data
fingerprint, metrics, versions, training arguments) so that anything downstream can rebuild and
check the model without the training code. Directories are written atomically; nothing pickled.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

MANIFEST = "shelfml.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A directory that is not a usable shelfml checkpoint."""


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_manifest(path: Path, error: type[Exception], what: str) -> dict:
    """A JSON manifest, or ``error`` saying it is missing (``{folder} is not {what}``) or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path.parent} is not {what}: {path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is corrupt: {e}") from None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("shelfml", "torch", "transformers", "tokenizers", "numpy", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def ensure_writable(out: Path, force: bool) -> None:
    """Refuse to replace an existing non-empty directory unless ``force``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} already exists and is not empty; pass --force to replace it")


def make_readable(folder: Path) -> None:
    """Directories 0755, files 0644: artifacts are read by other users (the containers run as uid 10001)."""
    folder = Path(folder)
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def write_checkpoint(out: Path, save_files: Callable[[Path], None], manifest: dict | Callable[[Path], dict],
                     name: str = MANIFEST) -> Path:
    """Write files + manifest (``name``) into a temporary sibling, then swap it into place. ``manifest``
    may be a function of the temporary folder (e.g. to hash what ``save_files`` wrote)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_files(tmp)
        manifest = manifest(tmp) if callable(manifest) else manifest
        manifest = {"format_version": FORMAT_VERSION, **manifest, "versions": versions()}
        (tmp / name).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        make_readable(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def update_manifest(ckpt: Path, **fields) -> None:
    """Merge fields into an existing manifest (atomic replace of the one file)."""
    manifest = read_manifest(ckpt)
    manifest.update(fields)
    tmp = Path(ckpt) / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(Path(ckpt) / MANIFEST)


def read_manifest(ckpt: Path, task: str | None = None, weights: bool = True) -> dict:
    """Read and check a checkpoint's manifest; raises CheckpointError naming the problem.
    ``weights=False`` accepts a folder with the manifest and tokenizer only (an export's assets)."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt} is not a directory")
    path = ckpt / MANIFEST
    manifest = read_json_manifest(path, CheckpointError, "a shelfml checkpoint")
    from shelfml.families import FAMILIES

    if not isinstance(manifest, dict) or manifest.get("task") not in FAMILIES:
        raise CheckpointError(f"{path} is corrupt: 'task' must be one of {tuple(FAMILIES)}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
    if task and manifest["task"] != task:
        raise CheckpointError(f"{ckpt} holds a {manifest['task']} model, not a {task} model")
    if weights and not any(ckpt.glob("*.safetensors")):
        raise CheckpointError(f"{ckpt} is corrupt: no *.safetensors weights")
    return manifest
