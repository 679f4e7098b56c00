"""FAISS indexes of a reference corpus: building, the index directory, loading and search.

An index is a directory: ``index.faiss`` (FAISS's own writer), ``metadata.csv`` (one row per vector: id,
title, model input, description, label, levels, brand, price, normalised title) and ``index.json`` (encoder
name, weights digest and dimension, corpus fingerprint, row count, index kind and parameters, the recall@k of
an approximate index against exact search, and the index fingerprint). Vectors are L2-normalised, so inner
product is cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from shelfml.checkpoint import ensure_writable, read_json_manifest, versions, write_checkpoint
from shelfml.data import Catalog, DataSpec, load_catalog, normalise_title, split_catalog
from shelfml.labels import Label, format_target
from shelfml.retrieval.embedder import Embedder, shared_embedder
from shelfml.retrieval.errors import (FORMAT_VERSION, INDEX_FILE, KINDS, MANIFEST_FILE, METADATA_FILE, RECALL_K,
                                      RECALL_QUERIES, TIE_DECIMALS, RetrievalError)


IVF_TRAIN_PER_CELL = 64  # training vectors per IVF cell (faiss samples that many; its default is 256)


@dataclass
class IndexArgs:
    """How an index is built (recorded in its manifest)."""

    kind: str = "flat"  # flat: exact inner product; ivf / hnsw: approximate, recall@k measured;
    # ivfpq: IVF over product-quantised codes (pq_m bytes per vector); hnsw_sq: HNSW over 8-bit scalar codes
    nlist: int | None = None  # IVF cells (default ~4·sqrt(rows))
    nprobe: int = 16  # IVF cells searched per query
    pq_m: int | None = None  # PQ sub-vectors (bytes per vector at 8 bits; default dimension / 8)
    pq_bits: int = 8
    hnsw_m: int = 32  # HNSW neighbours per node
    ef_construction: int = 80
    ef_search: int = 64
    max_length: int = 64  # encoder tokens per text (titles rarely need more)
    batch_size: int = 128
    gpu: bool = False  # search on a GPU copy (needs faiss-gpu; never required)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RetrievalError(f"unknown index kind {self.kind!r}; expected one of {KINDS}")



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


def _pq_m(args: IndexArgs, n: int, d: int) -> int:
    """The PQ sub-vector count, checked: it must divide the dimension, and k-means needs 39 rows per centroid."""
    m = args.pq_m or max(1, d // 8)
    if d % m:
        raise RetrievalError(f"--pq-m {m} does not divide the vectors' dimension {d}: pick a divisor of {d}")
    if n < 39 * (1 << args.pq_bits):
        raise RetrievalError(f"ivfpq with {args.pq_bits}-bit codes needs at least {39 * (1 << args.pq_bits):,} "
                             f"vectors to train its quantiser, got {n:,}: use --kind flat, ivf or hnsw_sq")
    return m


def make_index(vectors: np.ndarray, args: IndexArgs):
    """A CPU FAISS index over L2-normalised ``vectors`` (inner product)."""
    faiss = _faiss()
    n, d = vectors.shape
    if args.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif args.kind in ("hnsw", "hnsw_sq"):
        index = (faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT) if args.kind == "hnsw" else
                 faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, args.hnsw_m, faiss.METRIC_INNER_PRODUCT))
        index.hnsw.efConstruction = args.ef_construction
        index.hnsw.efSearch = args.ef_search
        index.train(vectors)  # the scalar quantiser's ranges (nothing for full precision)
    else:
        nlist = args.nlist or max(1, min(n // 39, int(round(4 * math.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        index = (faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT) if args.kind == "ivf" else
                 faiss.IndexIVFPQ(quantizer, d, nlist, _pq_m(args, n, d), args.pq_bits, faiss.METRIC_INNER_PRODUCT))
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_CELL  # k-means on a sample: minutes, not an hour, at 1M
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
    _, ids = index.search(sample, k)
    return {"k": k, "queries": len(sample), "recall": round(_tie_aware_recall(truth, true_scores(sample, vectors, ids),
                                                                              ids), 4)}


def true_scores(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The exact inner product of each query with each id it got back: a compressed index's own scores are
    estimates from its codes, and comparing those with the exact ones would flatter it."""
    return np.einsum("qd,qkd->qk", queries, vectors[np.maximum(ids, 0)])


def _tie_aware_recall(exact_scores: np.ndarray, scores: np.ndarray, ids: np.ndarray, eps: float = 1e-5) -> float:
    """``scores``: the exact scores of the ids found (:func:`true_scores`)."""
    kth = exact_scores[:, -1:]
    return float(((scores >= kth - eps) & (ids >= 0)).sum() / exact_scores.size)


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
    corpus_fp = hashlib.sha256((catalog.fingerprint() + "\x1e".join(frame["id"])).encode()).hexdigest()[:16]
    vectors = embed_in_shards(embedder, frame["input"].tolist(), shards_dir(out), f"{corpus_fp}-"
                              f"{embedder.describe()['digest']}-{args.max_length}", args.batch_size, progress)
    embed_s = time.perf_counter() - start
    start = time.perf_counter()
    index = make_index(vectors, args)
    build_s = time.perf_counter() - start
    searched = to_gpu(index) if args.gpu else index  # the file written is always the CPU index
    recall = recall_at_k(searched, vectors) if args.kind != "flat" else {"k": RECALL_K, "recall": 1.0, "exact": True}
    params = {k: v for k, v in asdict(args).items() if k not in ("batch_size", "gpu")}
    if args.kind in ("ivf", "ivfpq"):
        params.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
    if args.kind == "ivfpq":
        params.update(pq_m=int(index.pq.M))
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
    shutil.rmtree(shards_dir(out), ignore_errors=True)  # built: the embedded shards are no longer needed
    return {**manifest, "versions": versions()}


SHARD_ROWS = 50_000  # texts embedded per shard: an interrupted build keeps every finished shard


def shards_dir(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).name}.shards")


def embed_in_shards(embedder, texts: Sequence[str], folder: Path, key: str, batch_size: int = 128,
                    progress: bool = True, shard_rows: int = SHARD_ROWS) -> np.ndarray:
    """Embed ``texts`` shard by shard into ``folder`` (``.npy`` files named by ``key``: the corpus, the encoder
    weights and the text length), keeping the finished ones: a build interrupted at any point embeds only the
    shards it had not finished when run again. Returns every vector, in order."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npy"):  # another corpus or encoder: not reusable
        if not stale.name.startswith(key):
            stale.unlink()
    parts = []
    starts = range(0, len(texts), shard_rows)
    for start in tqdm(starts, desc="embedding shards", unit="shard", disable=not progress or len(starts) < 2):
        path = folder / f"{key}-{start:010d}.npy"
        if not path.is_file():
            vectors = embedder.encode(list(texts[start:start + shard_rows]), batch_size, progress and len(starts) < 2)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vectors, allow_pickle=False)
            tmp.replace(path)  # a shard is there whole, or not at all
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), np.float32)


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
        metadata = pd.read_csv(directory / METADATA_FILE, dtype=str, keep_default_na=False, index_col=False)
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

    def search(self, texts: Sequence[str], k: int, progress: bool = False) -> list[list[Neighbour]]:
        return self.search_vectors(self.embed(texts, progress), k)

    def label(self, row: int, levels: int | None = None) -> Label:
        m = self.metadata
        cols = [c for c in m.columns if c.startswith("level_")][:levels]
        return Label(tuple(m.at[row, c] for c in cols), m.at[row, "brand"])
