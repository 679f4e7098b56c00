"""Retrieval: all-MiniLM-L6-v2 embeddings of a reference corpus in a FAISS index, and the enrichment text.

An index is a directory: ``index.faiss`` (FAISS's own writer), ``metadata.csv`` (one row per vector: id,
title, model input, description, label, levels, brand, price, normalised title) and ``index.json`` (encoder
name, weights digest and dimension, corpus fingerprint, row count, index kind and parameters, the recall@k of
an approximate index against exact search, and the index fingerprint). Vectors are L2-normalised, so inner
product is cosine similarity.

The tagger's input becomes ``text || n1 ; n2 ; ...`` (:class:`EnrichFormat`, recorded in its checkpoint).
At training time a row never retrieves itself nor a row with the same normalised title (``exclude_keys``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import resource
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from shelfml.checkpoint import ensure_writable, read_json_manifest, sha256_file, versions, write_checkpoint
from shelfml.data import Catalog, DataSpec, load_catalog, normalise_title, split_catalog
from shelfml.labels import BRAND_SEP, LEVEL_SEP, Label, format_target, parse_target

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.csv"
MANIFEST_FILE = "index.json"
FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "hnsw")
FIELDS = ("labels", "brands", "descriptions")
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
RECALL_K = 10  # recall@k of an approximate index against exact search, measured at build time
RECALL_QUERIES = 1000
TIE_DECIMALS = 5  # scores equal to this many decimals are ties, broken by index row


class RetrievalError(ValueError):
    """An index, corpus or enrichment setting that cannot be used as asked; the message names both sides."""


# ---------------------------------------------------------------------------------------------
# Encoder


@dataclass
class IndexArgs:
    """How an index is built (recorded in its manifest)."""

    kind: str = "flat"  # flat: exact inner product; ivf / hnsw: approximate, recall@k measured
    nlist: int | None = None  # IVF cells (default ~4·sqrt(rows))
    nprobe: int = 16  # IVF cells searched per query
    hnsw_m: int = 32  # HNSW neighbours per node
    ef_construction: int = 80
    ef_search: int = 64
    max_length: int = 64  # encoder tokens per text (titles rarely need more)
    batch_size: int = 128
    gpu: bool = False  # search on a GPU copy (needs faiss-gpu; never required)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RetrievalError(f"unknown index kind {self.kind!r}; expected one of {KINDS}")


class Embedder:
    """A sentence-transformers encoder (all-MiniLM-L6-v2 by default), L2-normalised float32 output."""

    def __init__(self, path: str | None = None, max_length: int = 64, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        from shelfml.price import default_encoder

        default = default_encoder()
        self.path = str(path or default)
        if not Path(self.path).is_dir():
            raise RetrievalError(f"encoder {self.path!r} is not a local directory (nothing is downloaded)")
        self.name = DEFAULT_ENCODER_NAME if Path(self.path).resolve() == Path(default).resolve() else self.path
        self.model = SentenceTransformer(self.path, device=device, local_files_only=True)
        self.model.max_seq_length = max_length
        self.max_length = max_length
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())
        weights = sorted(Path(self.path).glob("*.safetensors")) or sorted(Path(self.path).glob("*.bin"))
        self.digest = sha256_file(weights[0])[:16] if weights else "unknown"

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "digest": self.digest, "dimension": self.dimension,
                "max_length": self.max_length, "normalised": True}

    def encode(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


@lru_cache(maxsize=4)
def shared_embedder(path: str | None = None, max_length: int = 64) -> Embedder:
    """One loaded encoder per (path, max_length) per process."""
    return Embedder(path, max_length)


# ---------------------------------------------------------------------------------------------
# FAISS indexes


def _faiss():
    import faiss

    return faiss


def has_faiss_gpu() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index):
    """A GPU copy of a CPU index (flat and IVF; faiss has no GPU HNSW)."""
    faiss = _faiss()
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def make_index(vectors: np.ndarray, args: IndexArgs):
    """A CPU FAISS index over L2-normalised ``vectors`` (inner product)."""
    faiss = _faiss()
    n, d = vectors.shape
    if args.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif args.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.hnsw.efSearch = args.ef_search
    else:
        nlist = args.nlist or max(1, min(n // 39, int(round(4 * math.sqrt(n)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(args.nprobe, nlist)
    index.add(vectors)
    return index


def _set_search_width(index, fetch: int) -> None:
    """HNSW returns at most efSearch results: widen it when a search asks for more."""
    if hasattr(index, "hnsw") and index.hnsw.efSearch < fetch:
        index.hnsw.efSearch = fetch


def recall_at_k(index, vectors: np.ndarray, k: int = RECALL_K, queries: int = RECALL_QUERIES, seed: int = 0) -> dict:
    """Recall@k of ``index`` against exact inner product, on a sample of the corpus vectors: the fraction of
    its k results scoring at least the exact k-th score (ties count: catalogs repeat texts, and among equal
    vectors which id comes first is arbitrary)."""
    faiss = _faiss()
    k = min(k, len(vectors))
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth, _ = exact.search(sample, k)
    _set_search_width(index, k)
    found, ids = index.search(sample, k)
    return {"k": k, "queries": len(sample), "recall": round(_tie_aware_recall(truth, found, ids), 4)}


def _tie_aware_recall(exact_scores: np.ndarray, scores: np.ndarray, ids: np.ndarray, eps: float = 1e-5) -> float:
    kth = exact_scores[:, -1:]
    return float(((scores >= kth - eps) & (ids >= 0)).sum() / exact_scores.size)


# ---------------------------------------------------------------------------------------------
# Corpus and index directories


def corpus_frame(catalog: Catalog, ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The metadata table of a catalog; refuses an empty corpus and duplicate ids."""
    if len(catalog) == 0:
        raise RetrievalError(f"corpus {catalog.source} is empty: an index needs at least one row")
    ids = [f"row-{i}" for i in range(len(catalog))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(catalog):
        raise RetrievalError(f"{len(ids)} ids for a corpus of {len(catalog)} rows ({catalog.source})")
    seen: dict[str, int] = {}
    for row, i in enumerate(ids):
        if i in seen:
            raise RetrievalError(f"duplicate id {i!r} in corpus {catalog.source}: rows {seen[i]} and {row}")
        seen[i] = row
    f = catalog.frame
    frame = pd.DataFrame({"id": ids, "text": f["text"], "input": catalog.inputs(), "description": f["description"],
                          "brand": f["brand"], "price": f["price"], "title_key": f["text"].map(normalise_title)})
    for col in catalog.level_columns:
        frame[col] = f[col]
    frame["label"] = [format_target(lab) for lab in catalog.labels()] if catalog.level_columns else ""
    return frame


def index_fingerprint(corpus_fp: str, encoder: dict, args: dict) -> str:
    key = json.dumps({"corpus": corpus_fp, "encoder": [encoder["name"], encoder["digest"], encoder["dimension"],
                                                      encoder["max_length"]], "index": args}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_index(catalog: Catalog, out: Path, args: IndexArgs | None = None, ids: Sequence[str] | None = None,
                corpus_info: dict | None = None, encoder: str | None = None, force: bool = False,
                progress: bool = True) -> dict:
    """Embed ``catalog`` (its model inputs), build the index, measure recall@k, write ``out`` atomically."""
    args = args or IndexArgs()
    ensure_writable(out, force)
    frame = corpus_frame(catalog, ids)  # validates before anything is embedded
    if args.gpu and not has_faiss_gpu():
        raise RetrievalError("--gpu asked for a GPU index, but this faiss has no GPU support "
                             f"(faiss {_faiss().__version__}, {_faiss().get_num_gpus()} GPUs); install faiss-gpu")
    start = time.perf_counter()
    embedder = shared_embedder(encoder, args.max_length)
    vectors = embedder.encode(frame["input"].tolist(), args.batch_size, progress)
    embed_s = time.perf_counter() - start
    start = time.perf_counter()
    index = make_index(vectors, args)
    build_s = time.perf_counter() - start
    searched = to_gpu(index) if args.gpu else index  # the file written is always the CPU index
    recall = recall_at_k(searched, vectors) if args.kind != "flat" else {"k": RECALL_K, "recall": 1.0, "exact": True}
    corpus_fp = hashlib.sha256((catalog.fingerprint() + "\x1e".join(frame["id"])).encode()).hexdigest()[:16]
    params = {k: v for k, v in asdict(args).items() if k not in ("batch_size", "gpu")}
    if args.kind == "ivf":
        params.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
    enc = embedder.describe()
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": args.kind,
        "params": params,
        "encoder": enc,
        "dimension": enc["dimension"],
        "rows": len(frame),
        "corpus": {"source": catalog.source, "fingerprint": corpus_fp, "levels": catalog.level_names,
                   **(corpus_info or {})},
        "fingerprint": index_fingerprint(corpus_fp, enc, params),
        "recall_at_k": recall,
        "seconds": {"embed": round(embed_s, 2), "build": round(build_s, 3)},
        "files": {"index": INDEX_FILE, "metadata": METADATA_FILE},
    }

    def save(tmp: Path) -> None:
        _faiss().write_index(index, str(tmp / INDEX_FILE))
        frame.to_csv(tmp / METADATA_FILE, index=False)

    write_checkpoint(Path(out), save, manifest, name=MANIFEST_FILE)
    return {**manifest, "versions": versions()}


def build_index_from_spec(spec: DataSpec, out: Path, args: IndexArgs | None = None, split: str = "train",
                          split_seed: int = 0, force: bool = False, task: str = "tagger") -> dict:
    """``shelfml index build``: the ``split`` rows of a catalog (``all`` for every row), split as ``task``
    splits it (the price task drops rows without a price, so its split differs)."""
    catalog = load_catalog(spec, task=task)
    info = {"spec": asdict(spec), "task": task, "split": split, "split_seed": split_seed,
            "data_fingerprint": catalog.fingerprint()}
    if split != "all":
        parts, split_info = split_catalog(catalog, seed=split_seed)
        catalog = parts[split]
        info["split_counts"] = split_info.counts
    return build_index(catalog, out, args, corpus_info=info, force=force)


@dataclass
class Neighbour:
    id: str
    score: float
    row: int  # position in the metadata table


class Retriever:
    """A loaded index directory: search by text, with optional exclusion of normalised titles."""

    def __init__(self, directory: Path, manifest: dict, index, metadata: pd.DataFrame, embedder: Embedder) -> None:
        self.directory, self.manifest, self.index, self.metadata, self.embedder = (
            Path(directory), manifest, index, metadata, embedder)
        self.keys = metadata["title_key"].to_numpy()
        self.max_group = int(metadata["title_key"].value_counts().max())  # rows sharing one normalised title

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def describe(self) -> dict:
        """The index as a checkpoint trained against it records it (checked again at load)."""
        m = self.manifest
        return {"path": str(self.directory.resolve()), "fingerprint": m["fingerprint"], "kind": m["kind"],
                "rows": m["rows"], "encoder": m["encoder"]["name"], "dimension": m["dimension"],
                "corpus_fingerprint": m["corpus"]["fingerprint"]}

    @classmethod
    def load(cls, directory: Path, encoder: str | None = None, gpu: bool = False,
             embedder: Embedder | None = None) -> "Retriever":
        """Load and check an index directory against the query encoder (default all-MiniLM-L6-v2). ``embedder``:
        any object with ``describe()`` and ``encode(texts)`` (e.g. a served ONNX MiniLM) used instead."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        manifest = read_json_manifest(path, RetrievalError, "a shelfml index")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RetrievalError(f"{path}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
        built = manifest["encoder"]
        embedder = embedder or shared_embedder(encoder, int(built.get("max_length", 64)))
        ours = embedder.describe()
        if [built[k] for k in ("name", "digest", "dimension")] != [ours[k] for k in ("name", "digest", "dimension")]:
            raise RetrievalError(
                f"index {directory} was built with encoder {built['name']} (weights {built['digest']}, dimension "
                f"{built['dimension']}), but the query encoder is {ours['name']} (weights {ours['digest']}, "
                f"dimension {ours['dimension']}); rebuild the index with the query encoder")
        for name in (INDEX_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise RetrievalError(f"index {directory} is incomplete: {name} is missing")
        index = _faiss().read_index(str(directory / INDEX_FILE))
        if index.d != manifest["dimension"] or index.d != ours["dimension"]:
            raise RetrievalError(f"index {directory / INDEX_FILE} holds {index.d}-dimensional vectors, but its "
                                 f"manifest says {manifest['dimension']} and the query encoder {ours['name']} gives "
                                 f"{ours['dimension']}")
        metadata = pd.read_csv(directory / METADATA_FILE, dtype=str, keep_default_na=False)
        if not (index.ntotal == len(metadata) == manifest["rows"]):
            raise RetrievalError(f"index {directory}: {index.ntotal} vectors, {len(metadata)} metadata rows and "
                                 f"{manifest['rows']} rows in the manifest must be equal")
        metadata["price"] = pd.to_numeric(metadata["price"], errors="coerce")
        if gpu:
            if not has_faiss_gpu():
                raise RetrievalError(f"a GPU search of {directory} was asked, but this faiss has no GPU support; "
                                     "install faiss-gpu or drop the GPU flag")
            index = to_gpu(index)
        return cls(directory, manifest, index, metadata, embedder)

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self.embedder.encode(texts, progress=progress)

    def search_vectors(self, vectors: np.ndarray, k: int, exclude_keys: Sequence[str] | None = None
                       ) -> list[list[Neighbour]]:
        """Top-k per query; with ``exclude_keys`` (one normalised title per query), rows whose normalised
        title equals the query's are skipped (so is the query's own row). Catalogs repeat titles, so many
        scores tie up to float noise: scores equal to :data:`TIE_DECIMALS` decimals are ordered by index row,
        which keeps the neighbours the same whichever encoder build (PyTorch, ONNX) embedded the query."""
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        if exclude_keys is not None and len(exclude_keys) != len(vectors):
            raise RetrievalError(f"{len(exclude_keys)} exclusion keys for {len(vectors)} queries")
        fetch = min(self.index.ntotal, k + self.max_group + (self.max_group if exclude_keys is not None else 0))
        _set_search_width(self.index, fetch)
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), fetch)
        ids = self.metadata["id"].to_numpy()
        out = []
        for q, (srow, rrow) in enumerate(zip(scores, rows)):
            kept = [(float(s), int(r)) for s, r in zip(srow, rrow)
                    if r >= 0 and (exclude_keys is None or self.keys[r] != exclude_keys[q])]
            kept.sort(key=lambda sr: (-round(sr[0], TIE_DECIMALS), sr[1]))
            out.append([Neighbour(str(ids[r]), s, r) for s, r in kept[:k]])
        return out

    def stored_vectors(self, texts: Sequence[str]) -> np.ndarray | None:
        """The index's own vectors when ``texts`` are exactly its corpus inputs in order (no re-embedding)."""
        if len(texts) != self.index.ntotal or self.metadata["input"].tolist() != list(texts):
            return None
        try:
            return self.index.reconstruct_n(0, self.index.ntotal)
        except RuntimeError:  # an IVF index without a direct map
            return None

    def search(self, texts: Sequence[str], k: int, exclude_keys: Sequence[str] | None = None,
               progress: bool = False) -> list[list[Neighbour]]:
        return self.search_vectors(self.embed(texts, progress), k, exclude_keys)

    def label(self, row: int, levels: int | None = None) -> Label:
        m = self.metadata
        cols = [c for c in m.columns if c.startswith("level_")][:levels]
        return Label(tuple(m.at[row, c] for c in cols), m.at[row, "brand"])


# ---------------------------------------------------------------------------------------------
# Enrichment text


CONTEXT_SEP = " || "  # between the product text and its neighbours
NEIGHBOUR_SEP = " ; "  # between neighbours
DESC_SEP = " :: "  # before a neighbour's description


def _clean(text: str) -> str:
    """A neighbour field never contains the enrichment separators."""
    text = " ".join(str(text).split())
    return re.sub(r"\s*(\|\||;|::)\s*", ", ", text).strip(" ,")


@dataclass
class EnrichFormat:
    """How K neighbours are appended to the product text: ``text || n1 ; n2 ; ...``, each neighbour being
    ``a > b > c | brand :: description`` restricted to ``fields``. Recorded in the checkpoint manifest."""

    k: int
    fields: list[str] = field(default_factory=lambda: ["labels", "brands"])
    text_chars: int = 240  # the product text is cut here so the neighbours survive the token limit
    description_chars: int = 80
    version: int = 1

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in FIELDS]
        if bad or not self.fields:
            raise RetrievalError(f"retrieval fields {self.fields} must be a non-empty subset of {FIELDS}")
        if self.k < 1:
            raise RetrievalError(f"retrieval k must be at least 1, got {self.k}")

    def token_budget(self) -> int:
        """Input tokens the neighbours get on top of the product text's."""
        return self.k * (16 + (24 if "descriptions" in self.fields else 0))

    def to_dict(self) -> dict:
        return {**asdict(self), "context_sep": CONTEXT_SEP, "neighbour_sep": NEIGHBOUR_SEP, "desc_sep": DESC_SEP}

    @classmethod
    def from_dict(cls, data: dict) -> "EnrichFormat":
        if data.get("version") != 1:
            raise RetrievalError(f"enrichment format version {data.get('version')} is not supported (expected 1)")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def neighbour_text(self, label: Label | None, description: str = "") -> str:
        parts = []
        if "labels" in self.fields and label is not None:
            parts.append(LEVEL_SEP.join(_clean(v) for v in label.path))
        if "brands" in self.fields and label is not None:
            parts.append(BRAND_SEP.strip() + " " + _clean(label.brand) if parts else _clean(label.brand))
        text = " ".join(parts).strip()
        if "descriptions" in self.fields:
            text += DESC_SEP + _clean(description)[: self.description_chars].strip()
        return text

    def format(self, text: str, neighbours: Sequence[tuple[Label | None, str]]) -> str:
        body = NEIGHBOUR_SEP.join(self.neighbour_text(lab, desc) for lab, desc in neighbours)
        return " ".join(str(text).split())[: self.text_chars].strip() + CONTEXT_SEP + body

    def parse(self, enriched: str) -> tuple[str, list[dict]]:
        """Inverse of :meth:`format` (up to the text cut and field cleaning): (text, one dict per neighbour)."""
        text, sep, body = enriched.rpartition(CONTEXT_SEP)
        if not sep:
            raise RetrievalError(f"not an enriched input (no {CONTEXT_SEP.strip()!r}): {enriched[:80]!r}")
        out = []
        for item in body.split(NEIGHBOUR_SEP) if body else []:
            rec: dict = {}
            head, _, desc = item.partition(DESC_SEP.strip()) if "descriptions" in self.fields else (item, "", "")
            head = head.strip()
            if "descriptions" in self.fields:
                rec["description"] = desc.strip()
            if "labels" in self.fields and "brands" in self.fields:
                lab = parse_target(head)
                rec.update(path=lab.path, brand=lab.brand)
            elif "labels" in self.fields:
                rec["path"] = tuple(p.strip() for p in head.split(LEVEL_SEP.strip()))
            elif "brands" in self.fields:
                rec["brand"] = head
            out.append(rec)
        return text, out


class Enricher:
    """Retriever + format: product texts -> enriched model inputs (cached per text)."""

    CACHE_ROWS = 200_000  # the cache starts afresh beyond this many texts

    def __init__(self, retriever: Retriever, fmt: EnrichFormat) -> None:
        self.retriever, self.format = retriever, fmt
        self._cache: dict[str, str] = {}

    def describe(self) -> dict:
        """What a checkpoint records: the format and the index it was trained against."""
        return {"format": self.format.to_dict(), "index": self.retriever.describe()}

    def neighbours_of(self, texts: Sequence[str], progress: bool = False) -> list[list[Neighbour]]:
        return self.retriever.search(texts, self.format.k, progress=progress)

    def render(self, texts: Sequence[str], neighbours: list[list[Neighbour]]) -> list[str]:
        m = self.retriever.metadata
        return [self.format.format(t, [(self.retriever.label(n.row), m.at[n.row, "description"]) for n in ns])
                for t, ns in zip(texts, neighbours)]

    def enrich(self, texts: Sequence[str], progress: bool = False) -> list[str]:
        """The model inputs for ``texts`` (queries; training rows go through :func:`enrich_training_rows`)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(todo) > self.CACHE_ROWS:
            self._cache.clear()
            todo = list(dict.fromkeys(texts))
        if todo:
            self._cache.update(zip(todo, self.render(todo, self.neighbours_of(todo, progress=progress))))
        return [self._cache[t] for t in texts]


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


def checkpoint_retriever(recorded: dict, ckpt: Path | str, index_dir: str | Path | None = None,
                         embedder: Embedder | None = None) -> Retriever:
    """The index a checkpoint trained with retrieval needs: ``index_dir`` or the recorded index path,
    checked against the recorded fingerprint (``embedder``: e.g. a served MiniLM, see :meth:`Retriever.load`)."""
    path = Path(index_dir or recorded["index"]["path"])
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
                   f"no index was given and {index['path']} is not an index ({MANIFEST_FILE} missing)")
        raise RetrievalError(
            f"checkpoint {ckpt} was trained with retrieval (k={recorded['format']['k']}, index {index['fingerprint']} "
            f"at {index['path']}), but {missing}; pass --retrieval-index DIR")
    if retriever.fingerprint != index["fingerprint"]:
        raise RetrievalError(
            f"checkpoint {ckpt} was trained against index {index['fingerprint']} ({index['rows']} rows, "
            f"{index['kind']}), but {retriever.directory} is index {retriever.fingerprint} "
            f"({retriever.manifest['rows']} rows, {retriever.manifest['kind']})")


# ---------------------------------------------------------------------------------------------
# Neighbours alone: kNN vote (the honest reference) and the price neighbour feature


def knn_vote(retriever: Retriever, neighbours: Sequence[Neighbour]) -> Label:
    """Similarity-weighted majority of the neighbours' paths, and separately of their brands."""
    paths: dict[tuple, float] = {}
    brands: dict[str, float] = {}
    for n in neighbours:
        lab, w = retriever.label(n.row), max(n.score, 1e-6)
        paths[lab.path] = paths.get(lab.path, 0.0) + w
        brands[lab.brand] = brands.get(lab.brand, 0.0) + w
    if not paths:
        raise RetrievalError("kNN vote over zero neighbours")
    return Label(max(paths, key=paths.get), max(brands, key=brands.get))


def neighbour_log_price(retriever: Retriever, neighbours: Sequence[Neighbour]) -> float:
    """Similarity-weighted median of the neighbours' log1p(price) (NaN when none has a price)."""
    prices = retriever.metadata["price"].to_numpy(dtype=np.float64)
    logs = np.array([np.log1p(prices[n.row]) for n in neighbours])
    weights = np.array([max(n.score, 1e-6) for n in neighbours])
    ok = np.isfinite(logs)
    if not ok.any():
        return float("nan")
    logs, weights = logs[ok], weights[ok]
    order = np.argsort(logs)
    cum = np.cumsum(weights[order])
    return float(logs[order][np.searchsorted(cum, 0.5 * cum[-1])])


PRICE_FEATURES = ("similarity-weighted median neighbour log1p(price) (NaN: no neighbour has a price)",
                  "top neighbour cosine similarity")


def neighbour_price_features(retriever: Retriever, neighbours: Sequence[Sequence[Neighbour]]) -> np.ndarray:
    """[rows, 2] float32: :data:`PRICE_FEATURES` of each row's neighbours."""
    return np.array([[neighbour_log_price(retriever, ns), ns[0].score if ns else 0.0] for ns in neighbours],
                    dtype=np.float32).reshape(len(neighbours), len(PRICE_FEATURES))


def price_neighbour_features(retriever: Retriever, texts: Sequence[str], k: int = 10,
                             exclude_keys: Sequence[str] | None = None, vectors: np.ndarray | None = None,
                             progress: bool = False) -> np.ndarray:
    """:func:`neighbour_price_features` of ``texts`` (k neighbours; training rows pass ``exclude_keys`` so a
    row never sees its own price)."""
    vectors = retriever.embed(texts, progress) if vectors is None else vectors
    return neighbour_price_features(retriever, retriever.search_vectors(vectors, k, exclude_keys))


# ---------------------------------------------------------------------------------------------
# Speed (workload W6 of the bench)


def _synthetic_vectors(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """Clustered unit vectors (products come in families), so approximate recall means something."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def retrieval_benchmark(rows: int = 100_000, dimension: int = 384, kinds: Sequence[str] = ("flat", "hnsw"),
                        k: int = 10, queries: int = 500, batch: int = 1024, seed: int = 0,
                        encoder: bool = False) -> dict:
    """Build time, index memory, batch-1 query latency (p50/p95/p99 ms), batch throughput and recall@k
    against exact search, over ``rows`` synthetic vectors; ``encoder=True`` adds MiniLM's batch-1
    embedding latency (the query's other half)."""
    faiss = _faiss()
    data = _synthetic_vectors(rows + queries + batch, dimension, seed)
    corpus, single, many = data[:rows], data[rows : rows + queries], data[rows + queries :]
    exact = faiss.IndexFlatIP(dimension)
    exact.add(corpus)
    truth, _ = exact.search(single, k)
    out: dict = {"workload": "W6 retrieval", "rows": rows, "dimension": dimension, "k": k, "queries": queries,
                 "batch": batch, "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "kinds": {}}
    for kind in kinds:
        args = IndexArgs(kind=kind)
        rss = _rss_mib()
        start = time.perf_counter()
        index = make_index(corpus, args)
        build_s = time.perf_counter() - start
        _set_search_width(index, k)
        index.search(single[:10], k)  # warm-up
        times, found, found_ids = [], [], []
        for q in single:
            t = time.perf_counter()
            scores, ids = index.search(q[None], k)
            times.append(time.perf_counter() - t)
            found.append(scores[0])
            found_ids.append(ids[0])
        t = time.perf_counter()
        index.search(many, k)
        batch_s = time.perf_counter() - t
        ms = np.array(times) * 1000
        out["kinds"][kind] = {
            "build_s": round(build_s, 3),
            "index_bytes": int(faiss.serialize_index(index).size),
            "peak_rss_growth_mib": round(_rss_mib() - rss, 1),
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 4) for q in (50, 95, 99)},
            "batch_queries_per_s": round(batch / batch_s, 1),
            "recall_at_k": round(_tie_aware_recall(truth, np.array(found), np.array(found_ids)), 4),
        }
    if encoder:
        embedder = shared_embedder()
        texts = [f"cotton t-shirt for men pack of {i}" for i in range(50)]
        embedder.encode(texts[:5])
        times = []
        for text in texts:
            t = time.perf_counter()
            embedder.encode([text])
            times.append(time.perf_counter() - t)
        out["encoder_batch1_ms"] = {"p50": round(float(np.percentile(times, 50) * 1000), 3),
                                    "p95": round(float(np.percentile(times, 95) * 1000), 3)}
    out["seed_reference_ms"] = 70.0  # the IndoML seed's offline query time, for comparison
    return out
