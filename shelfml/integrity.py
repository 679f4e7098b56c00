"""Integrity of a model repository: the sha256 of every file a model loads, recorded in ``repository.json``
when the repository is built, checked when it is served.

Each python model checks its own folder in ``initialize`` (a mismatch fails the load, naming the file);
``shelfml serve`` and the container entrypoint check the whole repository before the server starts, which
covers the leaves a stock backend (ONNX Runtime, TensorRT) loads without any code of ours. Recorded: the
graphs, assets, model code and warm-up inputs. Not recorded: the ``config.pbtxt`` files (operators tune them:
instances, queue sizes; Triton parses them against its schema and refuses a broken one), and what appears
later (an engine built on the GPU, ``__pycache__``).
"""

from __future__ import annotations

import json
from pathlib import Path

from shelfml.checkpoint import sha256_file

REPOSITORY_MANIFEST = "repository.json"


class IntegrityError(RuntimeError):
    """A repository file that is missing or differs from the sha256 recorded at build."""


def model_files(repo: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file in the repository's model folders (what ``verify`` checks)."""
    repo = Path(repo)
    return {str(p.relative_to(repo)): sha256_file(p) for p in sorted(repo.glob("*/**/*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pbtxt"}


def verify(repo: Path, model: str | None = None) -> int:
    """Check the recorded files of ``model`` (every model when None) against ``repository.json``; returns how
    many were checked. IntegrityError naming the first file that is missing or differs."""
    repo = Path(repo)
    manifest_path = repo / REPOSITORY_MANIFEST
    if not manifest_path.is_file():
        raise IntegrityError(f"{repo} has no {REPOSITORY_MANIFEST}: not a repository built by shelfml, nothing "
                             "to check its files against")
    recorded = json.loads(manifest_path.read_text(encoding="utf-8")).get("files")
    if not recorded:
        raise IntegrityError(f"{manifest_path} records no file hashes (built by an older shelfml): rebuild it with "
                             "`shelfml repository`")
    names = [n for n in recorded if model is None or n.startswith(f"{model}/")]
    if model is not None and not names:
        raise IntegrityError(f"{manifest_path} records no files of model {model!r}")
    for name in names:
        path = repo / name
        if not path.is_file():
            raise IntegrityError(f"{path} is missing (recorded in {REPOSITORY_MANIFEST}): the repository is "
                                 "incomplete; rebuild or re-copy it")
        if sha256_file(path) != recorded[name]:
            raise IntegrityError(f"{path} does not match its sha256 in {REPOSITORY_MANIFEST}: corrupt or replaced; "
                                 "refusing to serve it (rebuild the repository)")
    return len(names)
