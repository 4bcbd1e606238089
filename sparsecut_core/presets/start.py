"""Where a training stage starts: a preset's fresh model, an earlier stage's output, or a LLaVA checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

from ..inference.loading import resolve_model_dir
from ..model.modeling import SparseCutForConditionalGeneration
from ..model.processing import SparseCutProcessor, add_image_token
from .build import build_from_preset
from .preset import Preset


def from_llava_checkpoint(
    path: str | Path, template: str, **overrides
) -> tuple[SparseCutForConditionalGeneration, SparseCutProcessor]:
    """A SparseCut model and processor from a transformers LLaVA checkpoint (the adapter starts from its projector)."""
    model = SparseCutForConditionalGeneration.from_llava(LlavaForConditionalGeneration.from_pretrained(path), **overrides)
    tokenizer = AutoTokenizer.from_pretrained(path)
    add_image_token(tokenizer)  # LLaVA's tokenizer already holds <image>: a no-op then
    processor = SparseCutProcessor.from_parts(
        AutoImageProcessor.from_pretrained(path, backend="pil"), tokenizer,
        num_image_tokens=model.config.num_image_tokens, hi_res=model.config.hi_res,
        crop_grid=tuple(model.config.crop_grid), template=template,
    )
    return model, processor


def starting_model(
    preset: Preset,
    *,
    init_from: str | Path | None = None,
    from_llava: str | Path | None = None,
    vision: str | None = None,
    llm: str | None = None,
    seed: int = 0,
    template: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[SparseCutForConditionalGeneration, SparseCutProcessor]:
    """The model a stage trains: `init_from` (a saved model or run), a LLaVA checkpoint, or the preset built fresh.

    `cache_dir` holds GGUF sources converted for transformers (sources/gguf.py).
    """
    if init_from is not None and from_llava is not None:
        raise ValueError("give --from or --from-llava, not both")
    if init_from is not None:
        directory = resolve_model_dir(init_from)
        model = SparseCutForConditionalGeneration.from_pretrained(directory)
        processor = SparseCutProcessor.from_pretrained(directory)
    elif from_llava is not None:
        model, processor = from_llava_checkpoint(from_llava, template or preset.template, **preset.sparsecut)
    else:
        torch.manual_seed(seed)
        model, processor = build_from_preset(preset, vision=vision, llm=llm, seed=seed, cache_dir=cache_dir)
    if template is not None:
        processor.template = template
    return model, processor
