"""Retrieval: all-MiniLM-L6-v2 embeddings of a reference corpus in a FAISS index, by job.

- :mod:`~shelfml.retrieval.embedder`: the encoders (sentence-transformers; exported ONNX) and their contract
- :mod:`~shelfml.retrieval.index`: building, storing, loading and searching an index
- :mod:`~shelfml.retrieval.enrich`: the tagger's enrichment text ``text || n1 ; n2 ; ...``
- :mod:`~shelfml.retrieval.policy`: leakage rules at training time, the checkpoint's own index at load time
- :mod:`~shelfml.retrieval.price_feature`: the price model's neighbour feature

Nothing here imports torch at import time (the sentence-transformers encoder is loaded on first use).
"""

from shelfml.retrieval.embedder import (DEFAULT_ENCODER_NAME, EMBEDDER_SEQ, Embedder, OrtEmbedder, embedder_spec,
                                        served_embedder, shared_embedder)
from shelfml.retrieval.enrich import FIELDS, Enricher, EnrichFormat
from shelfml.retrieval.errors import INDEX_FILE, KINDS, MANIFEST_FILE, METADATA_FILE, RetrievalError
from shelfml.retrieval.index import (IndexArgs, Neighbour, Retriever, build_index, build_index_from_spec,
                                     corpus_frame, has_faiss_gpu, make_index, recall_at_k)
from shelfml.retrieval.policy import (CHECKPOINT_INDEX, checkpoint_enricher, checkpoint_retriever, check_index, enrich_training_rows,
                                      store_index, training_enricher, training_neighbours,
                                      training_retriever)
from shelfml.retrieval.price_feature import (PRICE_FEATURES, neighbour_log_price, neighbour_price_features,
                                             price_neighbour_features)

__all__ = [
    "CHECKPOINT_INDEX",
    "DEFAULT_ENCODER_NAME",
    "EMBEDDER_SEQ",
    "Embedder",
    "EnrichFormat",
    "Enricher",
    "FIELDS",
    "INDEX_FILE",
    "IndexArgs",
    "KINDS",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "Neighbour",
    "OrtEmbedder",
    "PRICE_FEATURES",
    "RetrievalError",
    "Retriever",
    "build_index",
    "build_index_from_spec",
    "check_index",
    "checkpoint_enricher",
    "checkpoint_retriever",
    "corpus_frame",
    "embedder_spec",
    "enrich_training_rows",
    "has_faiss_gpu",
    "make_index",
    "neighbour_log_price",
    "neighbour_price_features",
    "price_neighbour_features",
    "recall_at_k",
    "served_embedder",
    "shared_embedder",
    "store_index",
    "training_enricher",
    "training_neighbours",
    "training_retriever",
]
