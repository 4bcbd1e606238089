"""Training data: conversation templates, tokenizers, labels, records, batching and the built-in `shapes` data."""
