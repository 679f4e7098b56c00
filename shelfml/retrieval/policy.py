"""Which index a model may use: at training time never one holding validation/test titles, and a
training row never retrieves itself nor its normalised title; at load time the checkpoint's own index
(stored inside it), checked by fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from shelfml.data import Catalog, normalise_title
from shelfml.retrieval.embedder import Embedder
from shelfml.retrieval.enrich import Enricher, EnrichFormat
from shelfml.retrieval.errors import MANIFEST_FILE, RetrievalError
from shelfml.retrieval.index import Neighbour, Retriever


def training_enricher(index_dir: str | Path | None, k: int, fields: Sequence[str], parts: dict[str, Catalog]
                      ) -> Enricher:
    """The enricher a tagger trains with. Refuses an index holding validation or test titles (they would
    leak the answers into evaluation); training rows are enriched by :func:`enrich_training_rows`."""
    return Enricher(training_retriever(index_dir, f"--retrieval {k}", parts), EnrichFormat(k, list(fields)))


def training_retriever(index_dir: str | Path | None, flag: str, parts: dict[str, Catalog]) -> Retriever:
    """The index a model trains against (``flag``: the option that asked for it, for the message). Refuses
    an index holding validation or test titles: they would leak the answers into evaluation."""
    if not index_dir:
        raise RetrievalError(f"{flag} needs --retrieval-index DIR (build one with `shelfml index build`)")
    retriever = Retriever.load(Path(index_dir))
    held_out = {normalise_title(t) for s in ("validation", "test") for t in parts[s].frame["text"]}
    leaked = sorted(set(retriever.keys) & held_out)
    if leaked:
        raise RetrievalError(
            f"index {index_dir} holds {len(leaked)} normalised titles of this catalog's validation/test split "
            f"(e.g. {leaked[0]!r}); build it from the training split (`shelfml index build --split train` with the "
            "same --split-seed)")
    return retriever


def training_neighbours(retriever: Retriever, catalog: Catalog, k: int, progress: bool = True
                        ) -> list[list[Neighbour]]:
    """Neighbours of training rows: a row never retrieves itself nor a row with its normalised title
    (the index's stored vectors are reused when the rows are its corpus)."""
    keys = catalog.frame["text"].map(normalise_title).tolist()
    texts = catalog.inputs()
    vectors = retriever.stored_vectors(texts)
    if vectors is None:
        vectors = retriever.embed(texts, progress)
    return retriever.search_vectors(vectors, k, keys)


def enrich_training_rows(enricher: Enricher, catalog: Catalog, progress: bool = True) -> list[str]:
    """Enriched inputs of training rows (neighbours from :func:`training_neighbours`)."""
    neighbours = training_neighbours(enricher.retriever, catalog, enricher.format.k, progress)
    return enricher.render(catalog.inputs(), neighbours)


CHECKPOINT_INDEX = "retrieval_index"  # the index a model trained with, inside its checkpoint (and export assets)


def store_index(retriever: Retriever, folder: Path) -> dict:
    """Copy the index into a checkpoint being written (``folder``): a checkpoint travels with its index.
    Returns the index description with the path relative to the checkpoint."""
    shutil.copytree(retriever.directory, Path(folder) / CHECKPOINT_INDEX)
    return {**retriever.describe(), "path": CHECKPOINT_INDEX}


def recorded_index_path(recorded: dict, ckpt: Path | str) -> Path:
    """Where a checkpoint's index is: relative paths (the index stored inside) resolve against ``ckpt``."""
    path = Path(recorded["index"]["path"])
    return path if path.is_absolute() else Path(ckpt) / path


def checkpoint_retriever(recorded: dict, ckpt: Path | str, index_dir: str | Path | None = None,
                         embedder: Embedder | None = None) -> Retriever:
    """The index a checkpoint trained with retrieval needs: ``index_dir`` or the one stored in the checkpoint,
    checked against the recorded fingerprint (``embedder``: e.g. a served MiniLM, see :meth:`Retriever.load`)."""
    path = Path(index_dir) if index_dir else recorded_index_path(recorded, ckpt)
    retriever = Retriever.load(path, embedder=embedder) if (path / MANIFEST_FILE).is_file() else None
    check_index(recorded, retriever, ckpt, index_dir)
    return retriever


def checkpoint_enricher(recorded: dict, ckpt: Path | str, index_dir: str | Path | None = None,
                        embedder: Embedder | None = None) -> Enricher:
    """The enricher of a tagger trained with retrieval (its index from :func:`checkpoint_retriever`)."""
    retriever = checkpoint_retriever(recorded, ckpt, index_dir, embedder)
    return Enricher(retriever, EnrichFormat.from_dict(recorded["format"]))


def check_index(recorded: dict, retriever: Retriever | None, ckpt: Path | str,
                given: str | Path | None = None) -> None:
    """Refuse to run a checkpoint trained with retrieval without its index (or with another one)."""
    index = recorded["index"]
    if retriever is None:
        missing = (f"{given} is not an index ({MANIFEST_FILE} missing)" if given else
                   f"no index was given and {recorded_index_path(recorded, ckpt)} is not an index "
                   f"({MANIFEST_FILE} missing)")
        raise RetrievalError(
            f"checkpoint {ckpt} was trained with retrieval (k={recorded['format']['k']}, index {index['fingerprint']} "
            f"at {index['path']}), but {missing}; pass --retrieval-index DIR")
    if retriever.fingerprint != index["fingerprint"]:
        raise RetrievalError(
            f"checkpoint {ckpt} was trained against index {index['fingerprint']} ({index['rows']} rows, "
            f"{index['kind']}), but {retriever.directory} is index {retriever.fingerprint} "
            f"({retriever.manifest['rows']} rows, {retriever.manifest['kind']})")
