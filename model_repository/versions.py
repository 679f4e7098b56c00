"""Model versions in a built repository: add the next version of a family's models beside the serving one, or
roll the newest back, and (with a running server) load the change without a restart.

A family's export is several models (its leaves and its python model, version N of which runs version N of its
leaves), so a version is added to all of them together, with one number. Triton's config is per model, not per
version: a new version must have the serving version's inputs, outputs and parameters (same architecture,
same taxonomy); the configs on disk (the operator's tuning) are kept. The leaves keep ``LEAF_VERSIONS`` loaded,
so the serving python model's leaves stay up while the new one loads; the python models keep one (the newest).

Writes are ordered so a crash leaves a servable repository: new version folders appear under a hidden name,
``repository.json`` (the hashes :mod:`shelfml.integrity` checks) is replaced, then the folders get their
numbers. A rolled-back version moves to ``REPO.rolled-back/`` beside the repository, never deleted.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from shelfml.catalog import CATALOG_SERVICE
from shelfml.exports import ExportError, read_export, verify_files
from shelfml.families import family
from shelfml.integrity import REPOSITORY_MANIFEST, model_files
from shelfml.model_repository.build import cpu_int8, family_model_names, read_config, write_family_models

CATALOG = CATALOG_SERVICE.name

# Parameters a version may change: the operator's tuning, and the leaf file its CPU config runs (graph.json's).
NOT_COMPARED = ("thresholds", "top_k", "drift_window", "metrics", "intra_op_threads", "onnx_file")


def _manifest(repo: Path) -> dict:
    path = Path(repo) / REPOSITORY_MANIFEST
    if not path.is_file():
        raise ExportError(f"{repo} is not a model repository built by shelfml (no {REPOSITORY_MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))


def _write_manifest(repo: Path, manifest: dict, staged: str = "", version: int = 0) -> None:
    """repository.json with the hashes of the files on disk, those under ``staged`` recorded as ``version``'s."""
    def named(path: str) -> str:
        return path.replace(f"/{staged}/", f"/{version}/") if staged else path

    manifest["files"] = {named(k): v for k, v in model_files(repo).items()}
    manifest["onnx"] = {k: v for k, v in manifest["files"].items() if k.endswith("/model.onnx")}
    tmp = Path(repo) / f".{REPOSITORY_MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(Path(repo) / REPOSITORY_MANIFEST)


def versions_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in Path(folder).iterdir() if p.is_dir() and p.name.isdigit())


def _interface(config) -> tuple:
    """What a version must share with the serving one: tensors, batch size and parameters (not the tuning)."""
    params = {k: v.string_value for k, v in config.parameters.items() if k not in NOT_COMPARED}
    return ([(t.name, t.data_type, list(t.dims)) for t in config.input],
            [(t.name, t.data_type, list(t.dims)) for t in config.output], config.max_batch_size, params)


def _check_same_interface(repo: Path, built: Path, models: list[str], export: Path) -> None:
    for model in models:
        if not (repo / model / "config.pbtxt").is_file():
            raise ExportError(f"{export} would add model {model!r}, which {repo} does not serve: a new version must "
                              "serve the same models (build a new repository instead)")
        for name in ("config.pbtxt", "configs/cpu.pbtxt"):
            old, new = (_interface(read_config(root / model / name)) for root in (repo, built))
            for part, a, b in zip(("inputs", "outputs", "max_batch_size", "parameters"), old, new):
                if a != b:
                    raise ExportError(f"{export} cannot be a new version of {model!r}: its {part} differ from the "
                                      f"serving version's ({name}: {a} != {b}); a new architecture or taxonomy "
                                      "needs a new repository")


def add_version(repo: Path, task: str, export: Path, cpu_precision: str = "auto") -> int:
    """Add ``export`` as the next version of every model of ``task``'s family in ``repo``; returns its number."""
    repo, export = Path(repo), Path(export)
    manifest = _manifest(repo)
    if task not in manifest.get("model_versions", {}):
        raise ExportError(f"{repo} serves no {task} model to add a version to (it serves "
                          f"{sorted(manifest.get('model_versions', {}))})")
    export_manifest = read_export(export, task=task)
    verify_files(export)
    int8 = cpu_int8(export, export_manifest, cpu_precision)
    with tempfile.TemporaryDirectory(prefix=".shelfml-version-", dir=repo.parent) as tmp:
        built = Path(tmp)
        write_family_models(built, export, export_manifest, family(task), manifest["runtime"], int8)
        models = family_model_names(built, task)
        _check_same_interface(repo, built, models, export)
        version = _next_version(repo, models + [CATALOG])
        staged = f".incoming-{version}"
        for model in models:
            shutil.copytree(built / model / "1", repo / model / staged)
    manifest["model_versions"][task].append({"version": version, "export": export.name, "models": models})
    catalog = _stage_catalog(repo, staged)
    _write_manifest(repo, manifest, staged, version)
    for model in models + catalog:  # numbered only once every file is in place and recorded
        (repo / model / staged).rename(repo / model / str(version))
    print(f"shelfml: added {task} version {version} ({', '.join(models)}) from {export} to {repo}", file=sys.stderr)
    return version


def rolled_back_dir(repo: Path) -> Path:
    return Path(repo).with_name(f"{Path(repo).name}.rolled-back")


def retired_versions(repo: Path) -> list[int]:
    """Versions rolled back: never numbered again (a cache or a dashboard could mistake one for the other)."""
    folder = rolled_back_dir(repo)
    return versions_on_disk(folder) if folder.is_dir() else []


def rollback(repo: Path, task: str) -> int:
    """Move the newest version of ``task``'s models out of ``repo`` (to :func:`rolled_back_dir`); returns the
    version that serves after it (the one before). Refused when only one version is left."""
    repo = Path(repo)
    manifest = _manifest(repo)
    history = manifest.get("model_versions", {}).get(task)
    if not history:
        raise ExportError(f"{repo} serves no {task} model")
    if len(history) < 2:
        raise ExportError(f"{repo} has only {task} version {history[0]['version']}: nothing to roll back to")
    newest = history.pop()
    keep = rolled_back_dir(repo) / str(newest["version"])
    keep.mkdir(parents=True, exist_ok=True)
    for model in reversed(newest["models"]):  # the python model first: it stops using the leaves
        source = repo / model / str(newest["version"])
        if source.is_dir():
            shutil.rmtree(keep / model, ignore_errors=True)
            shutil.move(str(source), str(keep / model))
    version = _next_version(repo, [CATALOG])
    staged = f".incoming-{version}"
    catalog = _stage_catalog(repo, staged)
    _write_manifest(repo, manifest, staged, version)
    for model in catalog:
        (repo / model / staged).rename(repo / model / str(version))
    print(f"shelfml: rolled {task} back to version {history[-1]['version']}; version {newest['version']} is kept "
          f"in {keep}", file=sys.stderr)
    return history[-1]["version"]


def models_to_load(repo: Path, task: str) -> list[str]:
    """What a change of ``task``'s model reloads, in order: its leaves, its python model, then the catalog."""
    history = _manifest(repo).get("model_versions", {}).get(task)
    if not history:
        raise ExportError(f"{repo} serves no {task} model")
    return history[-1]["models"] + ([CATALOG] if (Path(repo) / CATALOG / "config.pbtxt").is_file() else [])


def _next_version(repo: Path, models: list[str]) -> int:
    return 1 + max([*(v for m in models if (repo / m).is_dir() for v in versions_on_disk(repo / m)),
                    *retired_versions(repo)])


def _stage_catalog(repo: Path, staged: str) -> list[str]:
    """A new version of the catalog model (its code, again) with every change of the models it calls: its
    response cache is keyed by its own version, so answers cached before the change are never served after it."""
    folder = repo / CATALOG
    if not (folder / "config.pbtxt").is_file():
        return []
    shutil.copytree(folder / str(versions_on_disk(folder)[-1]), folder / staged)
    return [CATALOG]
