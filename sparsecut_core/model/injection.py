"""Shortcut injection around the decoder layers of any Hugging Face causal LM.

Every decoder layer is wrapped in a `ShortcutDecoderLayer` that knows its
1-based index j. The SparseCut forward passes one `Shortcuts` object down
through the LLM's `**kwargs` (transformers forwards them to every decoder
layer); the wrapper takes it out, adds the Z_i of every shortcut (i, j) to the
visual positions of its input, and calls the original layer with the rest:

    H_j[visual] = H_{j-1}[visual] + sum_i Z_i

No hooks and no copy of the LLM's forward, so SDPA/flash attention, gradient
checkpointing (inside the original layer), bf16 and the KV cache are the LLM's
own. Decode steps pass no `Shortcuts`, so injection acts in the prefill only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SHORTCUTS_KWARG = "sparsecut_shortcuts"


@dataclass(frozen=True)
class Shortcuts:
    """What the wrapped layers add: visual positions and the features per target layer."""

    batch_index: torch.Tensor  # [P]: sample of each visual position, row-major over (batch, sequence)
    seq_index: torch.Tensor  # [P]: its position in the sequence
    features: dict[int, list[torch.Tensor]]  # llm_layer j -> [Z_i, ...], each [N_images, M_v, D_t], N*M_v = P

    def add_to(self, hidden_states: torch.Tensor, layer: int) -> torch.Tensor:
        """hidden_states [B, T, D_t] with every Z_i of shortcuts into `layer` added at the visual positions."""
        zs = self.features.get(layer)
        if not zs:
            return hidden_states
        z = torch.stack(zs).sum(0) if len(zs) > 1 else zs[0]
        z = z.reshape(-1, z.shape[-1]).to(hidden_states.dtype)
        return hidden_states.index_put((self.batch_index, self.seq_index), z, accumulate=True)


class ShortcutDecoderLayer(nn.Module):
    """A decoder layer that first adds the shortcuts targeting it (LLM layer `index`, 1-based)."""

    def __init__(self, layer: nn.Module, index: int):
        super().__init__()
        self.layer = layer
        self.index = index

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        shortcuts: Shortcuts | None = kwargs.pop(SHORTCUTS_KWARG, None)
        if shortcuts is not None:
            hidden_states = shortcuts.add_to(hidden_states, self.index)
        return self.layer(hidden_states, *args, **kwargs)

    def __getattr__(self, name: str):
        # the LLM's forward reads layer attributes such as `attention_type` (Qwen2, Mistral sliding windows)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)


def find_decoder_layers(language_model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of a causal LM (`model.layers` for Llama, Qwen2, Phi-3, Mistral...)."""
    decoder = language_model.get_decoder() if hasattr(language_model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"cannot find the decoder layers of {type(language_model).__name__}: "
            "SparseCut needs a decoder-only causal LM whose decoder has a `layers` ModuleList"
        )
    return layers


def wrap_decoder_layers(language_model: nn.Module) -> None:
    """Wraps every decoder layer of `language_model` in place (idempotent)."""
    layers = find_decoder_layers(language_model)
    for k, layer in enumerate(layers):
        if not isinstance(layer, ShortcutDecoderLayer):
            layers[k] = ShortcutDecoderLayer(layer, index=k + 1)
