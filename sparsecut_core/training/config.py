"""A training run's settings (one stage), validated once at construction; presets and the CLI fill them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..data.records import SkipCounter
from ..model.attention import ATTENTION
from ..model.freezing import STAGES

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    stage: str
    output_dir: str
    learning_rate: float
    global_batch_size: int
    per_device_batch_size: int = 4
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 2048
    template: str = "vicuna_v1"
    seed: int = 0
    save_every: int = 500  # optimizer steps between checkpoints
    keep_last: int = 2
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    attention: str = "auto"  # auto: flash_attention_2 on CUDA in bf16/fp16 when flash-attn is installed, else sdpa
    unfreeze_vision: bool = False
    cache_vision_features: bool = False  # a frozen tower runs once per image per run (feature_cache.py); off with unfreeze_vision
    lora_r: int = 0  # 0: full finetuning of the LLM; > 0: LoRA of this rank (peft)
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    qlora: bool = False  # LoRA over a 4-bit NF4 base LLM (bitsandbytes)
    on_bad_sample: str = "error"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {self.stage!r}")
        for name in ("global_batch_size", "per_device_batch_size", "save_every", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise ValueError("learning_rate and epochs must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: expected a value in [0, 1), got {self.warmup_ratio}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps: expected a positive integer, got {self.max_steps}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision: expected one of {', '.join(MIXED_PRECISION)}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention: expected one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.lora_r and self.stage != "finetune":
            raise ValueError("lora_r: LoRA applies to the finetune stage (the LLM is frozen in pretraining)")
        if self.qlora and not self.lora_r:
            raise ValueError("qlora: needs a LoRA rank (--lora R) to train beside the 4-bit base")
        SkipCounter(self.on_bad_sample)  # validates the policy

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process: global = per_device * world * steps."""
        per_step = self.per_device_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_batch_size "
                f"{self.per_device_batch_size} x {world_size} processes"
            )
        return self.global_batch_size // per_step

    def fit_to(self, world_size: int) -> TrainConfig:
        """This config with the per-device batch lowered, if needed, to the largest that splits the global
        batch evenly over `world_size` processes (a preset's default batch on more processes than it assumed)."""
        if self.global_batch_size % (self.per_device_batch_size * world_size) == 0:
            return self
        if self.global_batch_size % world_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} does not split over {world_size} "
                             f"processes: pass a --global-batch that is a multiple of {world_size}")
        share = self.global_batch_size // world_size
        fitting = max(d for d in range(1, min(self.per_device_batch_size, share) + 1) if share % d == 0)
        return replace(self, per_device_batch_size=fitting)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**data)
