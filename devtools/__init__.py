"""Helpers for Luna's tests and benchmarks (not part of the installed package)."""
