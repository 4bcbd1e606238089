"""Shared terminal output and model loading for the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

console = Console(emoji=False)  # ":train:" in "shapes:train:256" is not an emoji
err_console = Console(stderr=True, emoji=False)


def conversion_cache_dir() -> Path:
    """Where converted GGUF and ONNX sources are cached ($XDG_CACHE_HOME/sparsecut or ~/.cache/sparsecut)."""
    import os

    from sparsecut_core.sources.cache import default_cache_dir

    return default_cache_dir(os.environ, Path.home())


def load_model(model: Optional[Path], preset: Optional[str], seed: int, *, device: Optional[str] = None,
               quantize: Optional[str] = None):
    """A saved model folder, or a preset's model before training.

    With `device` (auto/cpu/cuda) the model is placed there in its inference dtype; with
    `quantize` ("4bit"/"8bit") its LLM is quantized by bitsandbytes (sparsecut_core.inference.quantization).
    """
    if model is not None:
        from sparsecut_core.inference.loading import load_pretrained

        return load_pretrained(model, device=device, quantize=quantize)
    from sparsecut_core.presets.build import build_from_preset
    from sparsecut_core.presets.preset import load_preset
    from sparsecut_core.inference.quantization import load_quantized, place, resolve_device

    built, processor = build_from_preset(load_preset(preset or "tiny"), seed=seed, cache_dir=conversion_cache_dir())
    if quantize is not None:
        return load_quantized(built, quantize, resolve_device(device or "auto")), processor
    if device is not None:
        return place(built, resolve_device(device)), processor
    return built.eval(), processor
