"""Which attention kernel the LLM and ViT run: flash-attention 2 when it can, else PyTorch's SDPA.

transformers picks SDPA by default and never flash-attention on its own; the issue's
"SDPA (flash-attention 2 if installed)" is this choice. FlashAttention-2 needs the
`flash-attn` package, a CUDA device and half-precision activations (bf16/fp16
weights or autocast); anywhere else `auto` means SDPA.
"""

from __future__ import annotations

import torch

ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
_HALF = {"bf16", "fp16", torch.bfloat16, torch.float16}


def flash_attention_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def resolve_attention(choice: str, device: torch.device | str, precision: str | torch.dtype | None) -> str:
    """The attention implementation to use: `choice`, or for "auto" flash_attention_2 where it runs, else sdpa.

    `precision` is the mixed-precision mode ("bf16", "fp16", "no") or the model's dtype.
    """
    if choice not in ATTENTION:
        raise ValueError(f"attention: expected one of {', '.join(ATTENTION)}, got {choice!r}")
    if choice != "auto":
        return choice
    on_cuda = torch.device(device).type == "cuda"
    return "flash_attention_2" if on_cuda and precision in _HALF and flash_attention_available() else "sdpa"
