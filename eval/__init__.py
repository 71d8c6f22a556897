"""Benchmark evaluation helpers (metrics matching the official reference evaluators)."""
