"""Serving a model over HTTP: an OpenAI-compatible chat completions API with dynamic batching, and a chat page.

`decoding.py` runs one left-padded batch token by token with per-row sampling; `text.py`
turns each row's tokens into streamed text with stop strings; `engine.py` queues requests
and batches those that wait while the model is busy; `messages.py` turns OpenAI messages
into a prompt and images; `app.py` is the FastAPI app; `server.py` runs it on a port.
"""
