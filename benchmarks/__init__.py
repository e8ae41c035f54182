"""Benchmarks run by the `scripts/bench-*` commands; each prints a Markdown report."""
