"""The retrieval package's error and the index directory's file names."""

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.csv"
MANIFEST_FILE = "index.json"
FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "hnsw", "ivfpq", "hnsw_sq")  # exact; full-precision approximate; compressed codes
RECALL_K = 10  # recall@k of an approximate index against exact search, measured at build time
RECALL_QUERIES = 1000
TIE_DECIMALS = 5  # scores equal to this many decimals are ties, broken by index row


class RetrievalError(ValueError):
    """An index, corpus or enrichment setting that cannot be used as asked; the message names both sides."""
