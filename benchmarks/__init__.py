"""Stage `benchmarks`: filled in by later issues (see README)."""
