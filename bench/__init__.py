"""Benchmarks: `python -m bench` (`--quick` for a ~2-minute smoke run); see
docs/performance.md. `python -m bench.ingest` is the older ingest-only benchmark."""
