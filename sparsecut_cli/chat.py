"""`sparsecut chat`: ask about an image in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sparsecut_cli.output import console, load_model


def chat(
    image: Path = typer.Argument(..., help="image file"),
    model: Optional[Path] = typer.Option(None, help="saved model folder"),
    preset: Optional[str] = typer.Option(None, help="build this preset instead of loading a model"),
    prompt: Optional[str] = typer.Option(None, help="answer once and exit (also read from piped stdin)"),
    max_new_tokens: int = typer.Option(64),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0),
    seed: int = typer.Option(0),
) -> None:
    """Ask about an image: once with --prompt (or piped stdin), else turn by turn (/reset, /exit)."""
    import torch

    from sparsecut_core.images import load_image
    from sparsecut_core.inference import Chat, Sampling

    load_image(image)  # a missing or unreadable file fails here, before any model loads
    torch.manual_seed(seed)
    loaded, processor = load_model(model, preset, seed)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    session = Chat(loaded, processor, image)
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt:
        console.print(session.ask(prompt, sampling), markup=False)
        return
    while True:
        try:
            question = console.input("[bold]user>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if question in ("/exit", "/quit"):
            break
        if question == "/reset":
            session.turns.clear()
            continue
        if question:
            console.print(session.ask(question, sampling), markup=False)
