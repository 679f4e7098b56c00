"""Stage `model_repository`: filled in by later issues (see README)."""
