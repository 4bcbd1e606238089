"""Shared terminal output and model loading for the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

console = Console(emoji=False)  # ":train:" in "shapes:train:256" is not an emoji
err_console = Console(stderr=True, emoji=False)


def load_model(model: Optional[Path], preset: Optional[str], seed: int):
    """A saved model folder, or a preset's model before training."""
    if model is not None:
        from sparsecut_core.inference import load_pretrained

        return load_pretrained(model)
    from sparsecut_core.building import build_from_preset
    from sparsecut_core.presets import load_preset

    built, processor = build_from_preset(load_preset(preset or "tiny"), seed=seed)
    return built.eval(), processor
