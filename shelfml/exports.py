"""The export directory's format, read by every stage after export (repository builder, runners,
benchmarks) without the export code or torch::

    export.json            task, opset, graph contracts, shape ranges, parity, INT8 deltas, versions, file hashes
    assets/                tokenizer + the checkpoint's shelfml.json (taxonomy, model config)
    *.onnx                 the family's graphs, FP32 and INT8
    embedder.onnx  assets/embedder/    the retrieval query encoder (models trained with retrieval)
"""

from __future__ import annotations

from pathlib import Path

from shelfml.checkpoint import read_json_manifest, sha256_file

EXPORT_MANIFEST = "export.json"
ASSETS = "assets"
EMBEDDER_ASSETS = "embedder"  # the retrieval embedder's tokenizer, inside assets/
EMBEDDER_DESCRIPTION = "encoder.json"  # ...and which encoder weights it was exported from (the index checks it)


class ExportError(ValueError):
    """An export that cannot be made, read or used (e.g. INT8 losing too much accuracy, a changed file)."""


def read_export(export_dir: Path, task: str | None = None) -> dict:
    """export.json of an export directory; ExportError naming the problem otherwise."""
    manifest = read_json_manifest(Path(export_dir) / EXPORT_MANIFEST, ExportError, "a shelfml export")
    if task and manifest.get("task") != task:
        raise ExportError(f"{export_dir} holds a {manifest.get('task')} export, not a {task} export")
    return manifest


def verify_files(export_dir: Path) -> None:
    """Refuse an export whose graph files changed since export (hash mismatch = corrupt or replaced)."""
    manifest = read_export(export_dir)
    for name, digest in manifest["files"].items():
        path = Path(export_dir) / name
        if not path.is_file():
            raise ExportError(f"{path} is missing from the export")
        if sha256_file(path) != digest:
            raise ExportError(f"{path} does not match the sha256 in {EXPORT_MANIFEST}: corrupt or replaced")
