"""Benchmarks: `python -m benchmarks.<name> --json` programs (see benchmarks/README.md)."""
