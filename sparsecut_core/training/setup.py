"""Getting a model and an accelerator ready to train: precision, attention kernel, QLoRA base, freezing, LoRA."""

from __future__ import annotations

import importlib.util
import math
from typing import Mapping

import torch

from ..inference.quantization import load_quantized
from ..model.attention import resolve_attention
from ..model.feature_cache import SharedFeatureCaches, VisionFeatureCache
from ..model.freezing import set_trainable
from .checkpoints import keep_trainable_weights
from .config import TrainConfig
from .launch import LaunchRequest, check_launch, describe, plan_device

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)"


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(config: TrainConfig, cpu: bool = False, log_dir: str | None = None,
                     environ: Mapping[str, str] | None = None):
    """The accelerator of this process. With the launcher's `environ` (the CLI passes os.environ) the launch is
    checked first (launch.py): it becomes the distributed run it was launched as, or raises LaunchError."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import FullyShardedDataParallelPlugin, get_distributed_backend, get_torch_accelerator_backend

    request = None
    if environ is not None:
        request = LaunchRequest.from_environ(environ)
        device_type, _ = get_torch_accelerator_backend()
        gpus = torch.accelerator.device_count() if device_type is not None else 0
        cpu = plan_device(request, cpu, gpus, get_distributed_backend(device_type) is not None)
    # on CPU processes accelerate would drop an FSDP config for plain DDP; FSDP2 is turned on below instead
    fsdp = FullyShardedDataParallelPlugin() if request is not None and request.fsdp and cpu else None
    # Text-only batches leave the adapter unused, which DDP must be told about.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.stage == "finetune")
    tracker = "tensorboard" if log_dir is not None and _has_tensorboard() else None
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=_mixed_precision(config.mixed_precision), kwargs_handlers=[ddp],
        log_with=tracker, project_dir=log_dir, fsdp_plugin=fsdp,
        # our scheduler counts optimizer steps; accelerate would step it once per process
        step_scheduler_with_optimizer=False,
    )
    if fsdp is not None:
        _shard_on_cpu(accelerator, fsdp)
    if request is not None:
        check_launch(request, describe(accelerator))
    accelerator.register_save_state_pre_hook(keep_trainable_weights)
    return accelerator


def _shard_on_cpu(accelerator, plugin) -> None:
    """FSDP2 over gloo: accelerate enables FSDP for GPU-like devices only, torch's fully_shard runs on CPU too."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if accelerator.num_processes < 2:
        return  # one process has nothing to shard over: describe() reports it as the single process it is
    state = AcceleratorState()
    state.fsdp_plugin = plugin
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)


def _has_tensorboard() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def prepare_model(model, config: TrainConfig, device: torch.device | None = None, precision: str = "no",
                  feature_cache: VisionFeatureCache | SharedFeatureCaches | None = None):
    """Pick the attention kernel, quantize the base for QLoRA, freeze per stage, add LoRA, gradient checkpointing.

    `feature_cache` (with cache_vision_features): a cache shared with other runs of the same frozen tower
    (a sweep's variants); by default the run gets one of its own."""
    model.set_attn_implementation(resolve_attention(config.attention, device or torch.device("cpu"), precision))
    if config.qlora:
        model = load_quantized(model, "4bit", device or torch.device("cpu"))
    set_trainable(model, config.stage, config.unfreeze_vision)
    if config.cache_vision_features and not config.unfreeze_vision:
        (feature_cache or VisionFeatureCache()).attach(model)
    if config.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=LORA_TARGETS)
        model = get_peft_model(model, lora)
        for name, param in model.named_parameters():  # peft froze everything that is not LoRA
            if ".adapter." in name or (config.unfreeze_vision and ".vision_tower." in name):
                param.requires_grad_(True)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def schedule(optimizer, config: TrainConfig, total_steps: int):
    # imported here: transformers.optimization pulls in peft and bitsandbytes (~2 s) for every command
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(config.warmup_ratio * total_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
