"""Prefill cost: FLOPs of vision encoder, adapter and LLM, counted on the meta device and in closed form.

SPEC "Cost": 2 FLOPs per multiply-accumulate, for the vision encoder over all
views, every adapter application, the LLM decoder over visual + text positions
and the LM head on the last position only (as in generation). Only matmuls and
convolutions count; norms, softmax, activations and the shortcut additions are
elementwise and left out, by `FlopCounterMode` and by the formula alike.

`count_flops` builds the model on PyTorch's meta device (no weights, no
memory) and runs its three stages under `torch.utils.flop_counter.FlopCounterMode`;
`formula_flops` is the same cost written out per layer. Attention counts both
matmuls (QK^T and AV) over the full T x T score matrix, causal or not: that is
what the counter reports for SDPA on meta, where SDPA runs its math path as two
`bmm`s (on CPU tensors the fused kernel is not counted at all, hence meta).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.tokenizer import TINY_VOCAB, build_word_tokenizer
from ..model.configuration import SparseCutConfig, vision_prefix_tokens
from ..model.injection import SHORTCUTS_KWARG, Shortcuts
from ..model.modeling import SparseCutForConditionalGeneration
from ..model.processing import add_image_token
from ..presets.preset import Preset, load_preset

METHODS = ("llava", "llava-concat", "sparsecut")
GATED_MLP_LLMS = ("llama", "qwen2", "phi3", "mistral")  # gate, up, down projections: 3 matmuls of D x I
FORMULA_VISION = ("clip_vision_model",)


@dataclass(frozen=True)
class Flops:
    """Prefill FLOPs of one forward, split by part."""

    vision: int
    adapter: int
    llm: int

    @property
    def total(self) -> int:
        return self.vision + self.adapter + self.llm


@dataclass(frozen=True)
class CostRow:
    """One row of `sparsecut flops`: a method, its size and its prefill FLOPs."""

    method: str
    hi_res: bool
    context_visual_tokens: int
    params: int
    flops: Flops

    def as_dict(self) -> dict:
        """The row of the `--json` output (parameters in billions, FLOPs in TFLOPs)."""
        return {
            "method": self.method,
            "hi_res": self.hi_res,
            "context_visual_tokens": self.context_visual_tokens,
            "params_b": self.params / 1e9,
            "vision_tflops": self.flops.vision / 1e12,
            "adapter_tflops": self.flops.adapter / 1e12,
            "llm_tflops": self.flops.llm / 1e12,
            "total_tflops": self.flops.total / 1e12,
        }


# --- the setups being costed ---
def _check_setup(config: SparseCutConfig, text_tokens: int, context_views: int) -> None:
    if text_tokens < 1:
        raise ValueError(f"text_tokens must be >= 1 (the prompt has at least one text token), got {text_tokens}")
    if context_views < 1:
        raise ValueError(f"context_views must be >= 1, got {context_views}")
    if context_views > 1 and config.hi_res:
        raise ValueError("context_views > 1 concatenates views in the context; it needs a config with hi_res=False")


def context_length(config: SparseCutConfig, text_tokens: int, context_views: int = 1) -> int:
    """LLM positions of the prefill: every context view's M_v visual positions plus the text."""
    return context_views * config.num_image_tokens + text_tokens


def meta_model(config: SparseCutConfig):
    """The model on the meta device: shapes and modules only, nothing allocated or downloaded."""
    with torch.device("meta"):
        return SparseCutForConditionalGeneration(config).eval()


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters, tied ones once (`parameters()` deduplicates them)."""
    return sum(p.numel() for p in model.parameters())


# --- counted: the model's own parts under FlopCounterMode ---
def _counted(fn, *args, **kwargs) -> tuple[int, object]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


def _modules_key(config: SparseCutConfig) -> str:
    # the view layout (hi_res, crop_grid) is input shape, not modules: one meta model serves every layout
    fields = {k: v for k, v in config.to_dict().items() if k not in ("hi_res", "crop_grid")}
    return json.dumps(fields, sort_keys=True, default=str)


class MetaCounter:
    """Counts prefill FLOPs on meta models, each distinct ViT or LLM pass once.

    The rows of a table share passes (llava and low-res sparsecut run the same LLM
    over the same length; llava-concat and hi-res sparsecut the same ViT over the
    same views), and a 13B meta forward takes seconds, so a counter remembers the
    passes it has counted and the meta models it has built.
    """

    def __init__(self) -> None:
        self._models: dict[str, torch.nn.Module] = {}
        self._passes: dict[tuple, int] = {}

    def model(self, config: SparseCutConfig) -> torch.nn.Module:
        key = _modules_key(config)
        if key not in self._models:
            self._models[key] = meta_model(config)
        return self._models[key]

    @torch.no_grad()
    def flops(self, config: SparseCutConfig, text_tokens: int, context_views: int = 1) -> Flops:
        """One image (`context_views > 1`: that many base-size views, LLaVA-style, all in the context)."""
        _check_setup(config, text_tokens, context_views)
        model = self.model(config)
        images, views = context_views, config.num_views  # concatenated views go through as images of their own
        vision = self._vision(model, config, images * views)
        adapter, features = _counted(model.adapter, *_adapter_inputs(config, images))
        visual = images * config.num_image_tokens
        llm = self._llm(model, config, context_length(config, text_tokens, context_views), visual, features)
        return Flops(vision=vision, adapter=adapter, llm=llm)

    def _vision(self, model, config: SparseCutConfig, views: int) -> int:
        key = ("vision", config.vision_config.to_json_string(), config.view_size, views)
        if key not in self._passes:
            vision = config.vision_config
            side, channels = config.view_size, getattr(vision, "num_channels", 3)
            pixel_values = torch.empty(views, channels, side, side, device="meta")  # every view of every image
            # what `vision_features` runs; called directly because its view-count check ties it to one layout
            self._passes[key], _ = _counted(
                model.vision_tower, pixel_values, output_hidden_states=config.source_layers
            )
        return self._passes[key]

    def _llm(self, model, config: SparseCutConfig, length: int, visual: int, features) -> int:
        key = ("llm", config.text_config.to_json_string(), length)
        if key not in self._passes:
            # the visual positions first (where they sit does not change the cost); the shortcut
            # additions are elementwise and uncounted, but they run, so this is the real prefill path
            shortcuts = Shortcuts(
                torch.zeros(visual, dtype=torch.long, device="meta"), torch.arange(visual, device="meta"), features
            )
            embeds = torch.empty(1, length, config.text_config.hidden_size, device="meta")
            # use_cache=True as in generation (it also skips transformers' data-dependent packed-sequence
            # check, which meta tensors cannot answer); logits_to_keep=1: the LM head on the last position only
            self._passes[key], _ = _counted(
                model.language_model, inputs_embeds=embeds, use_cache=True, logits_to_keep=1,
                **{SHORTCUTS_KWARG: shortcuts},
            )
        return self._passes[key]


def _adapter_inputs(config: SparseCutConfig, images: int):
    """ViT features per source layer, shaped as `vision_features` returns them.

    low: [N, M_v, D_v]; crops (hi-res only): [N, crops*M_v, D_v].
    """
    tokens, width = config.num_image_tokens, config.vision_config.hidden_size
    low = {i: torch.empty(images, tokens, width, device="meta") for i in config.source_layers}
    if not config.hi_res:
        return low, None
    crops = config.num_views - 1
    return low, {i: torch.empty(images, crops * tokens, width, device="meta") for i in config.source_layers}


def count_flops(config: SparseCutConfig, text_tokens: int, context_views: int = 1) -> Flops:
    """Prefill FLOPs of one image and `text_tokens` text positions, counted by FlopCounterMode on meta.

    The stages run one by one as `SparseCutForConditionalGeneration.forward` runs them
    (its image-token checks need real data): the ViT over all views, the adapter on
    meta features shaped as `vision_features` returns them, the LLM with the shortcuts.
    """
    return MetaCounter().flops(config, text_tokens, context_views)


# --- closed form: the same cost, layer by layer ---
def vision_formula(config: SparseCutConfig, views: int) -> int:
    """A CLIP ViT over `views` base-size views: patch-embedding conv, then every encoder layer."""
    vision = config.vision_config
    if vision.model_type not in FORMULA_VISION:
        raise ValueError(f"the FLOPs formula covers {FORMULA_VISION} towers, not {vision.model_type!r}")
    d, inner = vision.hidden_size, vision.intermediate_size
    patch, patches = vision.patch_size, config.patches_per_view
    tokens = patches + vision_prefix_tokens(vision)  # class (and register) tokens run through every layer
    conv = 2 * patches * getattr(vision, "num_channels", 3) * patch * patch * d
    projections = 2 * tokens * 4 * d * d  # q, k, v, out
    attention = 2 * 2 * tokens * tokens * d  # QK^T and AV over all heads
    mlp = 2 * 2 * tokens * d * inner  # fc1, fc2
    return views * (conv + config.num_vit_layers * (projections + attention + mlp))


def adapter_formula(config: SparseCutConfig, images: int) -> int:
    """Every adapter application: shared = once per source layer, per-shortcut = once per shortcut."""
    d_v, d_t = config.vision_config.hidden_size, config.text_config.hidden_size
    queries = images * config.num_image_tokens  # low-res tokens, per image M_v
    keys_per_image = config.num_image_tokens * (config.num_views - 1 if config.hi_res else 1)
    per_application = 2 * queries * (d_v * d_t + d_t * d_t)  # projector: Linear(D_v, D_t), Linear(D_t, D_t)
    if config.adapter == "xattn":
        projections = 2 * queries * 2 * d_v * d_v + 2 * images * keys_per_image * 2 * d_v * d_v  # q, o | k, v
        attention = 2 * 2 * images * config.num_image_tokens * keys_per_image * d_v
        ffn = 2 * 2 * queries * d_v * 4 * d_v if config.adapter_ffn else 0
        per_application += projections + attention + ffn
    shared = config.adapter_sharing == "shared"
    applications = len(config.source_layers) if shared else len(config.shortcuts)
    return applications * per_application


def llm_formula(config: SparseCutConfig, length: int) -> int:
    """A gated-MLP decoder over `length` positions (GQA-aware), plus the LM head on the last one."""
    text = config.text_config
    if text.model_type not in GATED_MLP_LLMS:
        raise ValueError(f"the FLOPs formula covers {GATED_MLP_LLMS} LLMs, not {text.model_type!r}")
    d, inner, heads = text.hidden_size, text.intermediate_size, text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or d // heads
    projections = 2 * length * d * (2 * heads * head_dim + 2 * kv_heads * head_dim)  # q, o | k, v
    attention = 2 * 2 * length * length * heads * head_dim  # every query head, QK^T and AV
    mlp = 2 * length * 3 * d * inner  # gate, up, down
    head = 2 * d * text.vocab_size
    return config.num_llm_layers * (projections + attention + mlp) + head


def formula_flops(config: SparseCutConfig, text_tokens: int, context_views: int = 1) -> Flops:
    """The closed-form cost of the setup `count_flops` counts (agrees with it to rounding)."""
    _check_setup(config, text_tokens, context_views)
    return Flops(
        vision=vision_formula(config, context_views * config.num_views),
        adapter=adapter_formula(config, context_views),
        llm=llm_formula(config, context_length(config, text_tokens, context_views)),
    )


# --- the rows of `sparsecut flops` ---
def costing_config(preset: Preset, **overrides) -> SparseCutConfig:
    """The preset's config with its real vocabulary size, from configs alone (no downloads).

    The vocabulary is the LLM config's `vocab_size` plus the image token, or the
    locally built word tokenizer's for presets with `tokenizer = "word"` (tiny).
    """
    if preset.tokenizer == "word":
        tokenizer = build_word_tokenizer(TINY_VOCAB)
        image_token_id = add_image_token(tokenizer)
        return preset.sparsecut_config(vocab_size=len(tokenizer), image_token_id=image_token_id, **overrides)
    if "vocab_size" not in preset.llm.config:
        raise ValueError(f"preset {preset.name}: llm.config has no vocab_size, needed to cost the LM head")
    return preset.sparsecut_config(**overrides)


def method_config(preset: Preset, method: str, *, hi_res: bool, pattern: str | None = None,
                  crop_grid: tuple[int, int] | None = None) -> SparseCutConfig:
    """The config a row costs: LLaVA (llava pattern, mlp adapter, low-res) or the preset's SparseCut design."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    overrides: dict = {"hi_res": hi_res and method == "sparsecut"}
    if crop_grid is not None:
        overrides["crop_grid"] = list(crop_grid)
    if method != "sparsecut":
        # exactly LLaVA-1.5: penultimate ViT layer into LLM layer 1 through the projector alone
        overrides.update(pattern="llava", adapter="mlp", adapter_sharing="shared", num_shortcuts=None)
    elif pattern is not None:
        overrides["pattern"] = pattern
        if not pattern.startswith("sparse"):
            overrides["num_shortcuts"] = None  # llava and dense patterns fix their own count
    return costing_config(preset, **overrides)


def cost_row(preset: Preset, method: str, *, hi_res: bool, text_tokens: int, pattern: str | None = None,
             crop_grid: tuple[int, int] | None = None, counter: MetaCounter | None = None) -> CostRow:
    """Builds the method's model on meta and counts its prefill (llava-concat: all views in the context)."""
    counter = MetaCounter() if counter is None else counter
    config = method_config(preset, method, hi_res=hi_res, pattern=pattern, crop_grid=crop_grid)
    rows, cols = config.crop_grid
    # llava-concat is the LLaVA model fed 1 + crops single-view "images": the LLM cost depends only on
    # its input length and the projector runs on every view, so no separate model class is needed
    context_views = 1 + rows * cols if method == "llava-concat" else 1
    return CostRow(
        method=method,
        hi_res=hi_res,
        context_visual_tokens=context_views * config.num_image_tokens,
        params=parameter_count(counter.model(config)),
        flops=counter.flops(config, text_tokens, context_views),
    )


def preset_costs(preset: Preset | str, *, hi_res: bool = False, text_tokens: int, pattern: str | None = None,
                 counter: MetaCounter | None = None) -> list[CostRow]:
    """llava and sparsecut at low resolution; with `hi_res` also llava-concat and hi-res sparsecut."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    counter = MetaCounter() if counter is None else counter
    kwargs = dict(text_tokens=text_tokens, counter=counter)
    rows = [
        cost_row(preset, "llava", hi_res=False, **kwargs),
        cost_row(preset, "sparsecut", hi_res=False, pattern=pattern, **kwargs),
    ]
    if hi_res:
        rows += [
            cost_row(preset, "llava-concat", hi_res=True, **kwargs),
            cost_row(preset, "sparsecut", hi_res=True, pattern=pattern, **kwargs),
        ]
    return rows


def crop_grid_sweep(preset: Preset | str, *, text_tokens: int, pattern: str | None = None,
                    grids: tuple[int, ...] = (1, 2, 3, 4),
                    counter: MetaCounter | None = None) -> list[tuple[int, CostRow, CostRow]]:
    """(g, llava-concat, hi-res sparsecut) for a g x g crop grid of the high-resolution view, per g."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    counter = MetaCounter() if counter is None else counter
    sweep = []
    for g in grids:
        kwargs = dict(hi_res=True, text_tokens=text_tokens, crop_grid=(g, g), counter=counter)
        concat = cost_row(preset, "llava-concat", **kwargs)
        sparsecut = cost_row(preset, "sparsecut", pattern=pattern, **kwargs)
        sweep.append((g, concat, sparsecut))
    return sweep


def concat_ratio(rows: list[CostRow]) -> float | None:
    """Total FLOPs of llava-concat over hi-res sparsecut, when both rows are there."""
    by_method = {(row.method, row.hi_res): row for row in rows}
    concat, sparsecut = by_method.get(("llava-concat", True)), by_method.get(("sparsecut", True))
    if concat is None or sparsecut is None:
        return None
    return concat.flops.total / sparsecut.flops.total
