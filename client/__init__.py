"""Stage `client`: filled in by later issues (see README)."""
