"""`SparseCutConfig`: a vision tower config, an LLM config and the shortcut design."""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .patterns import Pair, resolve_pattern

ADAPTER_KINDS = ("xattn", "mlp")
ADAPTER_SHARING = ("shared", "per-shortcut")
FEATURE_SELECT = ("patch", "full")


def vision_prefix_tokens(vision_config: PreTrainedConfig) -> int:
    """Tokens a tower puts before its patch tokens: CLIP's and DINOv2's class token, DINOv2's registers.

    SigLIP and most others have none.
    """
    if vision_config.model_type in ("clip_vision_model", "clip", "dinov2"):
        return 1
    if vision_config.model_type == "dinov2_with_registers":
        return 1 + vision_config.num_register_tokens
    return 0


@strict
class SparseCutConfig(PreTrainedConfig):
    r"""
    vision_config / text_config: the Hugging Face configs of the vision tower and of the causal LM.
    image_token_id: the id of the image placeholder token; each image view fills M_v positions.
    pattern: a name from `patterns.PATTERN_NAMES` or an explicit list of [vit_layer, llm_layer] pairs (1-based).
    num_shortcuts: n for the sparse named patterns (default 8).
    hi_res: fuse a high-resolution view (cut into `crop_grid` crops) by cross-attention.
    crop_grid: [rows, cols] of the high-resolution view, each crop of base size.
    adapter: `xattn` (SPEC's block + projector) or `mlp` (LLaVA's projector only).
    adapter_sharing: `shared` (one adapter for all shortcuts) or `per-shortcut`.
    adapter_ffn: add a ViT-width feed-forward inside the block (off in the paper).
    adapter_num_heads: attention heads of the block (default: the ViT's).
    adapter_input_norm: layer-normalise each source layer's features (learned scale and shift, per ViT
        channel) before the adapter. Off in the paper and in LLaVA; it puts shallow and deep layers of a
        tower whose feature scales differ tenfold (DINOv2 with layer scale) on one footing.
    vision_feature_select: `patch` drops the CLS (and register) tokens (LLaVA's default), `full` keeps them.
    image_size: the side of each view in pixels (default: the tower's `vision_config.image_size`); a tower that
        interpolates its position embeddings (DINOv2) can work at another size than it was pretrained at.
    """

    model_type = "sparsecut"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    pattern: str | list[list[int]] = "sparse-uniform"
    num_shortcuts: int | None = None
    hi_res: bool = False
    crop_grid: list[int] | None = None
    adapter: Literal["xattn", "mlp"] = "xattn"
    adapter_sharing: Literal["shared", "per-shortcut"] = "shared"
    adapter_ffn: bool = False
    adapter_num_heads: int | None = None
    adapter_input_norm: bool = False
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True
    vision_feature_select: Literal["patch", "full"] = "patch"
    tie_word_embeddings: bool = False
    image_size: int | None = None

    def __post_init__(self, **kwargs):
        if self.crop_grid is None:
            self.crop_grid = [2, 2]
        if not isinstance(self.pattern, str):  # tuples from Python, lists from JSON
            self.pattern = [[int(i), int(j)] for i, j in self.pattern]
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._validate()

    def _validate(self) -> None:
        """Runs once at construction; a plain ValueError whose message names the bad field."""
        if self.adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter must be one of {ADAPTER_KINDS}, got {self.adapter!r}")
        if self.adapter_sharing not in ADAPTER_SHARING:
            raise ValueError(f"adapter_sharing must be one of {ADAPTER_SHARING}, got {self.adapter_sharing!r}")
        if self.vision_feature_select not in FEATURE_SELECT:
            raise ValueError(f"vision_feature_select must be one of {FEATURE_SELECT}, got {self.vision_feature_select!r}")
        if len(self.crop_grid) != 2 or min(self.crop_grid) < 1:
            raise ValueError(f"crop_grid must be [rows, cols] of positive ints, got {self.crop_grid}")
        if self.hi_res and self.adapter == "mlp":
            raise ValueError("hi_res needs adapter='xattn': the mlp adapter cannot fuse the high-resolution view")
        if self.adapter_num_heads is not None and self.vision_config.hidden_size % self.adapter_num_heads:
            raise ValueError(
                f"adapter_num_heads={self.adapter_num_heads} does not divide the ViT width {self.vision_config.hidden_size}"
            )
        self._check_patch_grid()
        resolve_pattern(self.pattern, self.num_vit_layers, self.num_llm_layers, self.num_shortcuts)

    def _check_patch_grid(self) -> None:
        # every view (low-res and each crop) is a base-size image that the patch grid must tile exactly
        field = "image_size" if self.image_size is not None else "vision_config.image_size"
        if not isinstance(self.view_size, int) or self.view_size < 1:
            raise ValueError(f"{field} must be a positive int, got {self.view_size!r}")
        if self.view_size % self.vision_config.patch_size:
            raise ValueError(f"{field}={self.view_size} is not a multiple of patch_size={self.vision_config.patch_size}")

    @property
    def num_vit_layers(self) -> int:
        return int(self.vision_config.num_hidden_layers)

    @property
    def num_llm_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def shortcuts(self) -> list[Pair]:
        """The resolved (vit_layer, llm_layer) pairs, sorted by LLM layer."""
        return resolve_pattern(self.pattern, self.num_vit_layers, self.num_llm_layers, self.num_shortcuts)

    @property
    def source_layers(self) -> list[int]:
        """Distinct ViT layers that feed a shortcut, ascending."""
        return sorted({i for i, _ in self.shortcuts})

    @property
    def num_views(self) -> int:
        rows, cols = self.crop_grid
        return 1 + rows * cols if self.hi_res else 1

    @property
    def view_size(self) -> int:
        """The side of one view in pixels: `image_size` if set, else the tower's own."""
        return self.image_size if self.image_size is not None else self.vision_config.image_size

    @property
    def patches_per_view(self) -> int:
        side = self.view_size // self.vision_config.patch_size
        return side * side

    @property
    def num_image_tokens(self) -> int:
        """M_v: LLM positions per image (one low-res view, whatever `hi_res` is)."""
        extra = vision_prefix_tokens(self.vision_config) if self.vision_feature_select == "full" else 0
        return self.patches_per_view + extra


__all__ = ["SparseCutConfig"]
