"""A transformers LLaVA model's parts as SparseCut's: its config, its vision tower and its LLM.

`SparseCutForConditionalGeneration.from_llava` puts them together; with no overrides
the result is LLaVA itself (the `llava` pattern and the `mlp` adapter).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .configuration import SparseCutConfig


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
