"""Weights in formats transformers does not load directly (GGUF), converted once into cached model folders."""
