"""`sparsecut serve`: the OpenAI-compatible server (sparsecut_core.serving) on uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecut_cli.chat import _quantize_mode
from sparsecut_cli.output import console


def serve(
    model: Path = typer.Option(..., help="saved model folder (or a training run's)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (127.0.0.1: this machine only)"),
    port: int = typer.Option(8000, min=0, max=65535),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="LLM in 4-bit NF4 (bitsandbytes)"),
    load_8bit: bool = typer.Option(False, "--load-8bit", help="LLM in 8-bit (bitsandbytes LLM.int8())"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    max_batch_size: int = typer.Option(8, min=1, help="requests generated together at most"),
    max_queue: int = typer.Option(64, min=1, help="requests waiting at most; beyond that: 429"),
    timeout: float = typer.Option(300.0, min=0.01, help="seconds a request may wait and generate in all (504 after)"),
    api_key: Optional[str] = typer.Option(None, envvar="SPARSECUT_API_KEY",
                                          help="require `Authorization: Bearer KEY` on /v1 (also $SPARSECUT_API_KEY)"),
    model_name: Optional[str] = typer.Option(None, help="the model id clients send (default: the folder's name)"),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="also fetch http(s) image URLs (off: data URLs only)"),
    max_images: int = typer.Option(4, min=0, help="images per request at most"),
    max_image_mb: float = typer.Option(10.0, min=0.001, help="bytes per image at most, in MiB"),
    max_image_pixels: int = typer.Option(4096 * 4096, min=1, help="pixels per image at most"),
) -> None:
    """Serve a model over HTTP: OpenAI's /v1/chat/completions (streaming too), /v1/models, /health, a chat page at /."""
    import uvicorn

    from sparsecut_core.inference.loading import load_pretrained, resolve_model_dir
    from sparsecut_core.serving.app import ServerSettings, create_app
    from sparsecut_core.serving.engine import Engine
    from sparsecut_core.serving.messages import Limits

    quantize = _quantize_mode(load_4bit, load_8bit)
    folder = resolve_model_dir(model)
    loaded, processor = load_pretrained(folder, device=device, quantize=quantize)
    limits = Limits(max_images=max_images, max_image_bytes=int(max_image_mb * 2**20), max_image_pixels=max_image_pixels,
                    allow_remote_images=allow_remote_images)
    name = model_name or (folder.parent.name if folder.name == "model" else folder.name)
    engine = Engine(loaded, processor, max_batch_size=max_batch_size, max_queue=max_queue, timeout_s=timeout)
    app = create_app(engine, ServerSettings(name, api_key=api_key or None, limits=limits))
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    console.print(f"serving [bold]{name}[/] on {loaded.device} at http://{shown}:{port} "
                  f"(chat page /, API /v1, batches of up to {max_batch_size}"
                  f"{', API key required' if api_key else ''}); Ctrl-C stops", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
