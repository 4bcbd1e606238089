"""The SparseCut model: patterns, config, adapter, the shortcut injection, the model and its processor.

The bottom floor: it imports nothing else of sparsecut_core (see tests/test_layout.py).
"""
