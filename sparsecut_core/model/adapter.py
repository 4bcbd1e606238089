"""The modality adapter: ViT features of one source layer -> LLM-width features Z_i.

SPEC: `Block` is pre-norm multi-head attention at ViT width, queries from the
low-res view and keys/values from the high-res crops (self-attention over the
low-res view when hi-res is off), with a residual on the query stream; the
block's feed-forward is LLaVA's `mlp2x_gelu` projector, which also changes the
width to the LLM's. The `mlp` kind is the projector alone (LLaVA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration import SparseCutConfig


class Projector(nn.Module):
    """LLaVA's mlp2x_gelu: Linear(D_v, D_t), GELU, Linear(D_t, D_t)."""

    def __init__(self, vision_width: int, llm_width: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(vision_width, llm_width, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(llm_width, llm_width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class CrossAttention(nn.Module):
    """Multi-head attention at ViT width; `o_proj` starts at zero so the block starts as the identity."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)
        self.o_proj.zero_init = True  # read by the model's _init_weights

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # query [N, M, D], context [N, K, D] -> [N, M, D]
        n, m, d = query.shape
        h = self.num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> [N, h, L, D/h]
            return x.view(n, -1, h, d // h).transpose(1, 2)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(context)), heads(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v)  # no mask: every query sees every key
        return self.o_proj(out.transpose(1, 2).reshape(n, m, d))


class FeedForward(nn.Module):
    """Optional ViT-width FFN inside the block (off by default, as in the paper)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class FusionBlock(nn.Module):
    """Y = X_low + Attn(LN(X_low), LN(X_high)) [+ FFN]: keeps the low-res token count."""

    def __init__(self, width: int, num_heads: int, eps: float, ffn: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.attn = CrossAttention(width, num_heads)
        self.ffn_norm = nn.LayerNorm(width, eps=eps) if ffn else None
        self.ffn = FeedForward(width) if ffn else None

    def forward(self, low: torch.Tensor, high: torch.Tensor | None) -> torch.Tensor:
        query = self.norm(low)
        context = query if high is None else self.norm(high)
        y = low + self.attn(query, context)
        if self.ffn is not None:
            y = y + self.ffn(self.ffn_norm(y))
        return y


class Adapter(nn.Module):
    """One adapter application: [N, M_v, D_v] (+ [N, crops*M_v, D_v]) -> [N, M_v, D_t]."""

    def __init__(self, config: SparseCutConfig):
        super().__init__()
        vision = config.vision_config
        eps = getattr(vision, "layer_norm_eps", 1e-5)
        self.input_norm = nn.LayerNorm(vision.hidden_size, eps=eps) if config.adapter_input_norm else None
        if config.adapter == "xattn":
            heads = config.adapter_num_heads or vision.num_attention_heads
            self.block = FusionBlock(vision.hidden_size, heads, eps, config.adapter_ffn)
        else:
            self.block = None
        self.projector = Projector(
            vision.hidden_size, config.text_config.hidden_size, config.projector_hidden_act, config.projector_bias
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor | None = None) -> torch.Tensor:
        if self.input_norm is not None:
            low = self.input_norm(low)
            high = None if high is None else self.input_norm(high)
        if self.block is not None:
            low = self.block(low, high)
        return self.projector(low)


class ShortcutAdapters(nn.Module):
    """The adapters of all shortcuts: one shared (default) or one per (i, j) pair."""

    def __init__(self, config: SparseCutConfig):
        super().__init__()
        self.shortcuts = config.shortcuts
        self.shared = config.adapter_sharing == "shared"
        count = 1 if self.shared else len(self.shortcuts)
        self.adapters = nn.ModuleList(Adapter(config) for _ in range(count))

    def forward(
        self, low: dict[int, torch.Tensor], high: dict[int, torch.Tensor] | None
    ) -> dict[int, list[torch.Tensor]]:
        """ViT features per source layer -> {llm_layer j: [Z_i for every (i, j)]}, each [N, M_v, D_t]."""
        if self.shared:
            z_by_source = self._apply_shared(low, high)
            z_by_pair = [z_by_source[i] for i, _ in self.shortcuts]
        else:
            z_by_pair = [
                adapter(low[i], None if high is None else high[i])
                for adapter, (i, _) in zip(self.adapters, self.shortcuts)
            ]
        by_layer: dict[int, list[torch.Tensor]] = {}
        for (_, j), z in zip(self.shortcuts, z_by_pair):
            by_layer.setdefault(j, []).append(z)
        return by_layer

    def _apply_shared(
        self, low: dict[int, torch.Tensor], high: dict[int, torch.Tensor] | None
    ) -> dict[int, torch.Tensor]:
        # one adapter call over all source layers stacked on the batch axis: [S*N, M_v, D_v]
        sources = sorted(low)
        stacked_high = None if high is None else torch.cat([high[i] for i in sources])
        z = self.adapters[0](torch.cat([low[i] for i in sources]), stacked_high)
        return dict(zip(sources, z.chunk(len(sources))))
