"""The training loop of SPEC's two stages, over accelerate (single process, DDP, FSDP, DeepSpeed).

Written on accelerate rather than transformers' Trainer because exact resume needs
our own data order (modality-grouped batches, deterministic in seed and epoch) and
checkpoints that hold only the trainable weights (a pretraining checkpoint of a 7B
model is the adapter's few MB, not 14 GB); the Trainer owns both and would need
patching. Everything the run does goes to `output_dir`: `train_config.json`,
`metrics.jsonl`, `checkpoints/` and, at the end, the model in `model/`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .attention import ATTENTION, resolve_attention
from .batching import Collator, modality_length_batches
from .checkpoints import (
    keep_trainable_weights,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from .freezing import STAGES, set_trainable
from .records import BadSample, SkipCounter

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)"
# Fields that must agree between a run and the checkpoint it resumes from.
_RESUME_KEYS = ("stage", "learning_rate", "global_batch_size", "per_device_batch_size", "seed", "max_length",
                "template", "lora_r", "qlora", "unfreeze_vision")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was saved first; `--resume` continues from it."""


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class StepLog:
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    samples_per_s: float
    tokens_per_s: float
    elapsed_s: float


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(config: TrainConfig, cpu: bool = False, log_dir: str | None = None):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Text-only batches leave the adapter unused, which DDP must be told about.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.stage == "finetune")
    tracker = "tensorboard" if log_dir is not None and _has_tensorboard() else None
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=_mixed_precision(config.mixed_precision), kwargs_handlers=[ddp],
        log_with=tracker, project_dir=log_dir,
        # our scheduler counts optimizer steps; accelerate would step it once per process
        step_scheduler_with_optimizer=False,
    )
    accelerator.register_save_state_pre_hook(keep_trainable_weights)
    return accelerator


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def prepare_model(model, config: TrainConfig, device: torch.device | None = None, precision: str = "no"):
    """Pick the attention kernel, quantize the base for QLoRA, freeze per stage, add LoRA, gradient checkpointing."""
    model.set_attn_implementation(resolve_attention(config.attention, device or torch.device("cpu"), precision))
    if config.qlora:
        from .quantization import load_quantized

        model = load_quantized(model, "4bit", device or torch.device("cpu"))
    set_trainable(model, config.stage, config.unfreeze_vision)
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


def _schedule(optimizer, config: TrainConfig, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    warmup = math.ceil(config.warmup_ratio * total_steps)
    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint (they are about to be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, data_key: str) -> None:
    current = {**asdict(config), "data": data_key}
    for key in (*_RESUME_KEYS, "data"):
        if key in saved and saved[key] != current[key]:
            raise ValueError(f"--resume: {key} was {saved[key]!r} in this run, now {current[key]!r}; "
                             f"use a new output folder or the same settings")


def train(
    model,
    processor,
    dataset,
    records,
    images,
    config: TrainConfig,
    *,
    accelerator=None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    skips: SkipCounter | None = None,
) -> Path:
    """Train `model` on the encoded `dataset` (batching.encode_records) and save it to output_dir/model.

    `on_step` is called on the main process after every optimizer step (the CLI's
    progress bar). Raises NonFiniteLoss or TrainingInterrupted (after saving a checkpoint).
    """
    out = Path(config.output_dir)
    accelerator = accelerator or make_accelerator(config)
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = config.accumulation_steps(world)
    skips = skips or SkipCounter(config.on_bad_sample)
    data_key = str(dataset._fingerprint)
    checkpoints = out / "checkpoints"
    metrics_file = out / "metrics.jsonl"

    lengths, has_image = dataset["length"], dataset["has_image"]
    per_step = world * accumulation  # micro-batches consumed per optimizer step, all processes
    batches_per_epoch = len(modality_length_batches(lengths, has_image, config.per_device_batch_size,
                                                    seed=config.seed, epoch=0)) // per_step * per_step
    steps_per_epoch = batches_per_epoch // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"data: {len(dataset)} samples make no full global batch of {config.global_batch_size}")
    total_steps = config.max_steps or max(1, round(config.epochs * steps_per_epoch))

    torch.manual_seed(config.seed)
    model = prepare_model(model, config, accelerator.device, accelerator.mixed_precision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    step, epoch, position = 0, 0, 0  # position: micro-batches of this epoch already consumed (all processes)
    if resume and (found := latest_checkpoint(checkpoints)) is not None:
        saved_config = json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").is_file() else {}
        _check_resumable(saved_config, config, data_key)
        state = load_checkpoint(accelerator, found)
        step, epoch, position = state["step"], state["epoch"], state["position"]
        if accelerator.is_main_process:
            _truncate_metrics(metrics_file, step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "train_config.json", {
            **asdict(config), **(run_info or {}), "data": data_key, "world_size": world,
            "accumulation_steps": accumulation, "total_steps": total_steps, "samples": len(dataset),
            "mixed_precision": accelerator.mixed_precision,
            "attn_implementation": resolve_attention(config.attention, accelerator.device, accelerator.mixed_precision),
        })
    if accelerator.log_with:
        accelerator.init_trackers("sparsecut", config={k: v for k, v in asdict(config).items() if v is not None})

    collate = Collator(processor, records, images, config.on_bad_sample)
    started = time.perf_counter()

    def checkpoint() -> None:
        save_checkpoint(accelerator, checkpoints, {"step": step, "epoch": epoch, "position": position},
                        config.keep_last)

    model.train()
    try:
        while step < total_steps:
            order = modality_length_batches(lengths, has_image, config.per_device_batch_size, seed=config.seed,
                                            epoch=epoch)[:batches_per_epoch]
            mine = order[position + rank::world]
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, collate_fn=collate,
                                                 num_workers=config.num_workers)
            micro = iter(loader)
            while step < total_steps and position < batches_per_epoch:
                tick = time.perf_counter()
                losses, samples, tokens = [], 0, 0
                for k in range(accumulation):
                    batch = next(micro)
                    for reason in batch.pop("bad_samples"):
                        skips.handle(BadSample(reason))
                    sync = k == accumulation - 1
                    with accelerator.no_sync(model) if not sync else nullcontext():
                        with accelerator.autocast():
                            if "input_ids" in batch:
                                batch = {name: t.to(accelerator.device) for name, t in batch.items()}
                                loss = model(**batch).loss
                                samples += batch["input_ids"].shape[0]
                                tokens += int(batch["attention_mask"].sum())
                            else:  # every sample dropped: a zero loss keeps the processes in step
                                loss = sum(p.sum() for p in trainable) * 0.0
                        accelerator.backward(loss / accumulation)
                    losses.append(loss.detach().float())
                position += per_step
                mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
                if not math.isfinite(mean_loss):
                    raise NonFiniteLoss(f"loss is {mean_loss} at step {step + 1}; the last good checkpoint is kept")
                grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                seconds = time.perf_counter() - tick
                totals = accelerator.reduce(torch.tensor([samples, tokens], device=accelerator.device), "sum")
                log = StepLog(step=step, total_steps=total_steps, epoch=epoch, loss=mean_loss,
                              lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                              samples_per_s=float(totals[0]) / seconds, tokens_per_s=float(totals[1]) / seconds,
                              elapsed_s=time.perf_counter() - started)
                if accelerator.is_main_process:
                    with metrics_file.open("a") as handle:
                        handle.write(json.dumps(asdict(log)) + "\n")
                    if on_step is not None:
                        on_step(log)
                if accelerator.log_with:
                    accelerator.log({"loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm}, step=step)
                if position >= batches_per_epoch:  # the epoch is done: the next one has its own order
                    epoch, position = epoch + 1, 0
                if step % config.save_every == 0 or step == total_steps:
                    checkpoint()
                if position == 0:
                    break
    except KeyboardInterrupt:
        checkpoint()
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint saved, continue with --resume") from None
    finally:
        if accelerator.log_with:
            accelerator.end_training()
    return save_final(accelerator, model, processor, out)


def save_final(accelerator, model, processor, out: Path) -> Path:
    """The trained model (LoRA merged) and processor in out/model, written to a temp folder then renamed."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)  # gathers FSDP / ZeRO-3 shards on the main process
    final = out / "model"
    if accelerator.is_main_process:
        if hasattr(unwrapped, "merge_and_unload"):
            unwrapped = unwrapped.merge_and_unload()
            state = None
        unwrapped.config.use_cache = True
        tmp = out / "model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, state_dict=state)
        processor.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
