"""Scoring models on benchmarks as the official scripts do: readers, metrics, answering, results."""
