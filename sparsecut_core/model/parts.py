"""Pretrained parts from a hub id or folder: a vision tower (or the vision half of CLIP/SigLIP) and a causal LM.

`SparseCutForConditionalGeneration.from_pretrained_parts` puts them together with a fresh adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .processing import add_image_token

# full image-text checkpoints whose vision half we load as the tower
_VISION_HALF = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def load_kwargs(dtype: torch.dtype | str | None, attn_implementation: str | None) -> dict[str, Any]:
    """The `from_pretrained` keywords for the options that were given."""
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_vision_tower(source: str | Path, **kwargs: Any) -> PreTrainedModel:
    """A vision tower from a hub id or folder: a vision model, or the vision half of CLIP/SigLIP."""
    config = AutoConfig.from_pretrained(source)
    class_name = _VISION_HALF.get(config.model_type)
    if class_name is not None:
        return getattr(transformers, class_name).from_pretrained(source, **kwargs)
    return AutoModel.from_pretrained(source, **kwargs)


def load_language_model(llm: str | Path, image_token_id: int | None, **kwargs: Any) -> tuple[PreTrainedModel, int]:
    """A pretrained causal LM whose embeddings hold `image_token_id` (default: the id its tokenizer gives <image>)."""
    language_model = AutoModelForCausalLM.from_pretrained(llm, **kwargs)
    if image_token_id is None:
        image_token_id = add_image_token(AutoTokenizer.from_pretrained(llm))
    if image_token_id >= language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(image_token_id + 1)
    return language_model, image_token_id
