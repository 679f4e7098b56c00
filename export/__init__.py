"""Stage `export`: filled in by later issues (see README)."""
