"""Which parts train in each stage of SPEC's recipe."""

from __future__ import annotations

from torch import nn

STAGES = ("pretrain", "finetune")


def trainable_parts(stage: str, unfreeze_vision: bool = False) -> tuple[str, ...]:
    """Top-level submodules that train: pretrain = adapter; finetune = adapter + LLM (+ ViT if asked)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    parts = ("adapter",) if stage == "pretrain" else ("adapter", "language_model")
    return parts + ("vision_tower",) if unfreeze_vision else parts


def set_trainable(model: nn.Module, stage: str, unfreeze_vision: bool = False) -> list[str]:
    """Freezes everything but the stage's parts; returns the names of the trainable parameters."""
    parts = trainable_parts(stage, unfreeze_vision)
    names = []
    for name, param in model.named_parameters():
        # quantized (4-/8-bit) weights are integers and never train; QLoRA trains LoRA beside them
        param.requires_grad_(name.split(".", 1)[0] in parts and param.is_floating_point())
        if param.requires_grad:
            names.append(name)
    return names
