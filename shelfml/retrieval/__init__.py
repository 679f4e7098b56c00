"""Retrieval: all-MiniLM-L6-v2 embeddings of a reference corpus in a FAISS index, by job.

- :mod:`~shelfml.retrieval.embedder`: the encoders (sentence-transformers; exported ONNX) and their contract
- :mod:`~shelfml.retrieval.index`: building, storing, loading and searching an index
- :mod:`~shelfml.retrieval.enrich`: the tagger's enrichment text ``text || n1 ; n2 ; ...``
- :mod:`~shelfml.retrieval.policy`: leakage rules at training time, the checkpoint's own index at load time
- :mod:`~shelfml.retrieval.price_feature`: the price model's neighbour feature

Nothing here imports torch at import time (the sentence-transformers encoder is loaded on first use).
"""

import importlib

# name -> submodule, imported on first use: loading the error alone (the CLI) loads neither pandas nor faiss
_LAZY = {
    "CHECKPOINT_INDEX": "policy",
    "DEFAULT_ENCODER_NAME": "embedder",
    "EMBEDDER_SEQ": "embedder",
    "Embedder": "embedder",
    "EnrichFormat": "enrich",
    "Enricher": "enrich",
    "FIELDS": "enrich",
    "INDEX_FILE": "errors",
    "IndexArgs": "index",
    "KINDS": "errors",
    "MANIFEST_FILE": "errors",
    "METADATA_FILE": "errors",
    "Neighbour": "index",
    "OrtEmbedder": "embedder",
    "PRICE_FEATURES": "price_feature",
    "RetrievalError": "errors",
    "Retriever": "index",
    "build_index": "index",
    "build_index_from_spec": "index",
    "check_index": "policy",
    "checkpoint_enricher": "policy",
    "checkpoint_retriever": "policy",
    "corpus_frame": "index",
    "embedder_spec": "embedder",
    "enrich_training_rows": "policy",
    "has_faiss_gpu": "index",
    "make_index": "index",
    "neighbour_log_price": "price_feature",
    "neighbour_price_features": "price_feature",
    "price_neighbour_features": "price_feature",
    "recall_at_k": "index",
    "served_embedder": "embedder",
    "shared_embedder": "embedder",
    "store_index": "policy",
    "training_enricher": "policy",
    "training_neighbours": "policy",
    "training_retriever": "policy",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"shelfml.retrieval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shelfml.retrieval' has no attribute {name!r}")
