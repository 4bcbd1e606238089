"""`SparseCutForConditionalGeneration`: vision tower -> shortcut adapters -> causal LM.

The forward reads like SPEC's equations: views -> ViT hidden states of the
source layers -> one adapter application per source layer (or per shortcut) ->
the LLM, whose decoder layers add Z_i at the visual positions (injection.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from .adapter import ShortcutAdapters
from .configuration import SparseCutConfig, vision_prefix_tokens
from .fingerprint import write_weights_id
from .freezing import set_trainable
from .injection import SHORTCUTS_KWARG, Shortcuts, wrap_decoder_layers
from .llava import causal_lm_from_parts, config_from_llava
from .parts import load_kwargs, load_language_model, load_vision_tower


class SparseCutPreTrainedModel(PreTrainedModel):
    config_class = SparseCutConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # only the adapter's own modules reach here: the vision tower and the LLM init themselves.
        # Z lands in the LLM's residual stream, so the adapter starts at the LLM's own scale.
        if isinstance(module, nn.Linear):
            # `zero_init` (the fusion block's output projection: the block starts as the identity) is read
            # here, when the Linear itself is visited: transformers initialises children before parents and
            # guards every tensor it has initialised, so zeroing it from the parent would be skipped.
            if getattr(module, "zero_init", False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, std=getattr(self.config.text_config, "initializer_range", 0.02))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SparseCutForConditionalGeneration(SparseCutPreTrainedModel, GenerationMixin):
    """A LLaVA-style model whose vision features enter the LLM through sparse shortcuts.

    Inputs follow transformers' LLaVA: `input_ids` hold `image_token_id` M_v times per
    image; `pixel_values` is `[N_images, 3, H, W]`, or `[N_images, 1 + rows*cols, 3, H, W]`
    with `hi_res` (view 0 low-res, then the crops row-major), one entry per image in
    the order the images appear in the batch. Samples without an image need no entry.
    """

    def __init__(
        self,
        config: SparseCutConfig,
        vision_tower: PreTrainedModel | None = None,
        language_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        # PreTrainedModel resolves the attention backend on the top config only; the parts read their own
        config._attn_implementation = config._attn_implementation
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.adapter = ShortcutAdapters(config)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        wrap_decoder_layers(language_model)
        self.language_model = language_model
        # a VisionFeatureCache (feature_cache.py) while the tower is frozen: set by training and evaluation
        self.feature_cache = None
        self.post_init()

    # --- builders (parts.py, llava.py) and training stages (freezing.py) ---
    @classmethod
    def from_parts(
        cls, vision_tower: PreTrainedModel, language_model: PreTrainedModel, image_token_id: int, **config: Any
    ) -> "SparseCutForConditionalGeneration":
        """Around an existing vision tower and causal LM, with a freshly initialised adapter; `config`: the design."""
        # the parts' configs are shared with the new config, which would reset their attention backend
        config.setdefault("attn_implementation", language_model.config._attn_implementation)
        sparsecut_config = SparseCutConfig(
            vision_config=vision_tower.config,
            text_config=language_model.config,
            image_token_id=image_token_id,
            **config,
        )
        return cls(sparsecut_config, vision_tower, language_model).to(language_model.dtype)

    @classmethod
    def from_pretrained_parts(
        cls,
        vision: str | Path,
        llm: str | Path,
        *,
        image_token_id: int | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **config: Any,
    ) -> "SparseCutForConditionalGeneration":
        """From a pretrained vision tower and causal LM (hub ids or folders), adapter freshly initialised.

        How pretraining starts. `image_token_id` defaults to the id `add_image_token` gives the
        LLM's tokenizer; the LLM's embeddings grow to hold it.
        """
        kwargs = load_kwargs(dtype, attn_implementation)
        vision_tower = load_vision_tower(vision, **kwargs)
        language_model, image_token_id = load_language_model(llm, image_token_id, **kwargs)
        return cls.from_parts(vision_tower, language_model, image_token_id, **config)

    @classmethod
    def from_llava(
        cls, llava: LlavaForConditionalGeneration | str | Path, **overrides: Any
    ) -> "SparseCutForConditionalGeneration":
        """From a transformers LlavaForConditionalGeneration (or its folder); no overrides = the same model.

        The modules are taken over, not copied: deep-copy the LLaVA model first if you
        still need it unchanged. New adapter parts (fusion block, extra adapters) are
        freshly initialised; every adapter starts from the LLaVA projector.
        """
        if not isinstance(llava, LlavaForConditionalGeneration):
            llava = LlavaForConditionalGeneration.from_pretrained(llava)
        overrides.setdefault("attn_implementation", llava.config._attn_implementation)
        config = config_from_llava(llava.config, **overrides)
        language_model = causal_lm_from_parts(config.text_config, llava.model.language_model, llava.lm_head)
        model = cls(config, llava.model.vision_tower, language_model)
        projector_state = llava.model.multi_modal_projector.state_dict()
        for adapter in model.adapter.adapters:
            adapter.projector.load_state_dict(projector_state)
        return model.to(llava.dtype)

    def set_trainable(self, stage: str, unfreeze_vision: bool = False) -> list[str]:
        """Freezes all but the stage's parts (pretrain: adapter; finetune: + LLM); returns trainable names."""
        return set_trainable(self, stage, unfreeze_vision)

    def save_pretrained(self, save_directory: str | Path, is_main_process: bool = True, **kwargs: Any) -> None:
        """transformers' save, then the weights id (fingerprint.py) that evaluation keys its answers by."""
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_weights_id(Path(save_directory))

    # --- embeddings plumbing expected by PreTrainedModel / GenerationMixin ---
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # --- the three stages of the forward ---
    def vision_features(
        self, pixel_values: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor] | None]:
        """ViT hidden states of every source layer: low-res [N, M_v, D_v] and crops [N, crops*M_v, D_v]."""
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]  # [N, 1, 3, H, W]
        n, views = pixel_values.shape[:2]
        if views != self.config.num_views:
            raise ValueError(
                f"pixel_values has {views} views per image, the model expects {self.config.num_views} "
                f"(hi_res={self.config.hi_res}, crop_grid={self.config.crop_grid})"
            )
        trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        if self.feature_cache is not None and not (trainable and torch.is_grad_enabled()):
            by_layer = self.feature_cache.features(pixel_values, self._tower_hidden_states, self.config.source_layers)
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
                by_layer = self._tower_hidden_states(pixel_values)
        low = {i: h[:, 0] for i, h in by_layer.items()}
        high = {i: h[:, 1:].flatten(1, 2) for i, h in by_layer.items()}
        return low, (high if views > 1 else None)

    def _tower_hidden_states(
        self, pixel_values: torch.Tensor, layers: Sequence[int] | None = None
    ) -> dict[int, torch.Tensor]:
        """{layer: [N, views, M_v, D_v]} of `layers` (default: the source layers): the tower once over every
        view of every image."""
        n, views = pixel_values.shape[:2]
        layers = list(self.config.source_layers if layers is None else layers)
        # only these layers' hidden states are kept (the others come back as None)
        out = self.vision_tower(pixel_values.flatten(0, 1).to(self.vision_tower.dtype), output_hidden_states=layers)
        # `patch` features drop the class (and register) tokens; `full` keeps them
        skip = vision_prefix_tokens(self.config.vision_config) if self.config.vision_feature_select == "patch" else 0
        by_layer = {}
        for i in layers:
            h = out.hidden_states[i][:, skip:]
            if h.shape[1] != self.config.num_image_tokens:
                raise ValueError(
                    f"the vision tower gives {h.shape[1]} feature tokens per view for {tuple(pixel_values.shape[-2:])} "
                    f"pixels, but the config has M_v = {self.config.num_image_tokens} image tokens per view "
                    f"(views of {self.config.view_size} px, patch_size {self.config.vision_config.patch_size}): "
                    f"the processor's image size and the config's image_size disagree"
                )
            by_layer[i] = h.reshape(n, views, h.shape[1], h.shape[2])
        return by_layer

    def image_shortcuts(self, visual: torch.Tensor, pixel_values: torch.Tensor) -> Shortcuts:
        """The adapter outputs Z and the visual positions (`visual`: [B, T] image-token mask) they go to."""
        num_images, found = pixel_values.shape[0], int(visual.sum())
        expected = num_images * self.config.num_image_tokens
        if found != expected:
            raise ValueError(
                f"input_ids hold {found} image tokens but pixel_values give {num_images} images "
                f"x {self.config.num_image_tokens} tokens = {expected}"
            )
        low, high = self.vision_features(pixel_values)
        batch_index, seq_index = visual.nonzero(as_tuple=True)
        return Shortcuts(batch_index, seq_index, self.adapter(low, high))

    def embed_text(self, input_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Token embeddings with zero at the visual positions (SPEC: the shortcuts supply them)."""
        embeds = self.get_input_embeddings()(input_ids.masked_fill(visual, 0))
        return embeds.masked_fill(visual[..., None], 0.0)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        # transformers >= 5.24 hands the KV cache over as `cache` (`past_key_values` deprecated).
        cache = kwargs.pop("cache", None)
        if cache is None:
            cache = past_key_values
        if input_ids is None and (pixel_values is not None or inputs_embeds is None):
            raise ValueError("give input_ids (needed to locate image tokens) or inputs_embeds")
        visual = None if input_ids is None else input_ids == self.config.image_token_id
        if pixel_values is not None:
            kwargs[SHORTCUTS_KWARG] = self.image_shortcuts(visual, pixel_values)
            if inputs_embeds is None:
                inputs_embeds = self.embed_text(input_ids, visual)
        elif inputs_embeds is None and _is_prefill(cache) and visual.any():
            raise ValueError("input_ids contain image tokens but no pixel_values were given")
        return self.language_model(
            input_ids=None if inputs_embeds is not None else input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **_cache_kwarg(self.language_model, cache),
            **kwargs,
        )


def _cache_kwarg(model: torch.nn.Module, cache) -> dict:
    """The KV cache under the name this transformers release's forward takes."""
    if cache is None:
        return {}
    return {_cache_name(type(model)): cache}


@functools.cache
def _cache_name(model_class: type) -> str:
    """Once per class: decode steps call forward for every token."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _is_prefill(past_key_values) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0
