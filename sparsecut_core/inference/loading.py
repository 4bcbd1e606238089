"""A saved model and its processor, from a model folder or a training run's, on a device and maybe 4-/8-bit."""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.attention import resolve_attention
from ..model.modeling import SparseCutForConditionalGeneration
from ..model.processing import SparseCutProcessor
from .quantization import load_quantized, place, resolve_device


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model folder, or a training run's folder (whose final model is in `model/`)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise ValueError(f"{path} is not a saved sparsecut model (no config.json, nor model/config.json of a training run)")


def load_pretrained(
    path: str | Path,
    dtype: torch.dtype | None = None,
    *,
    device: str | torch.device | None = None,
    quantize: str | None = None,
) -> tuple[SparseCutForConditionalGeneration, SparseCutProcessor]:
    """A model and processor saved together with `save_pretrained` in one folder (or a training run's folder).

    Without `device` the model stays where transformers loads it (CPU, saved or given dtype);
    with it, it moves there in its inference dtype. `quantize` ("4bit"/"8bit") quantizes
    the LLM with bitsandbytes on `device` (default auto), see quantization.py.
    """
    path = resolve_model_dir(path)
    processor = SparseCutProcessor.from_pretrained(path)
    if quantize is not None:
        model = load_quantized(path, quantize, resolve_device(device or "auto"))
    else:
        model = SparseCutForConditionalGeneration.from_pretrained(path, dtype=dtype)
        if device is None:
            return model.eval(), processor
        target = resolve_device(device)
        model = place(model, target) if dtype is None else model.to(target)
    # flash-attention 2 where it runs (a GPU, half precision, flash-attn installed), else SDPA
    model.set_attn_implementation(resolve_attention("auto", model.device, model.dtype))
    return model.eval(), processor
