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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.batching import Collator, modality_length_batches
from ..data.records import BadSample, SkipCounter
from ..files import write_json_atomic
from ..model.attention import resolve_attention
from .checkpoints import (WRITE_ERRORS, checkpoint_bytes, discard_failed_write, latest_checkpoint, load_checkpoint,
                          prune_checkpoints, remove_checkpoint, save_checkpoint)
from .config import TrainConfig
from .launch import parameters_held
from .setup import make_accelerator, prepare_model, schedule

# Fields that must agree between a run and the checkpoint it resumes from.
_RESUME_KEYS = ("stage", "learning_rate", "global_batch_size", "per_device_batch_size", "seed", "max_length",
                "template", "lora_r", "qlora", "unfreeze_vision")


class NonFiniteLoss(RuntimeError):
    """The loss (or the weights) became NaN or infinite; the run stops and keeps its last good checkpoint."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was saved first; `--resume` continues from it."""


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged steps after `step`, the one the run starts from (they are about to be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _append_log(path: Path, log: StepLog) -> None:
    """One strict-JSON line per step: a non-finite value (an infinite lr, a NaN loss) is written as null."""
    row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(log).items()}
    with path.open("a") as handle:
        handle.write(json.dumps(row, allow_nan=False) + "\n")


def _stop_non_finite(accelerator, checkpoints: Path, what: str, unconfirmed: int | None) -> NonFiniteLoss:
    """The error that stops the run, after removing the checkpoint whose weights gave the non-finite loss.

    A checkpoint is good once the step after it has a finite loss: the weights it holds
    can be finite yet huge (1e30 after one step of a far too high learning rate) and give
    NaN only at the next forward. So a stop right after a save drops that save.
    """
    if accelerator.is_main_process and unconfirmed is not None:
        remove_checkpoint(checkpoints, unconfirmed)
    accelerator.wait_for_everyone()
    dropped = f"checkpoint-{unconfirmed} held those weights and was removed; " if unconfirmed is not None else ""
    kept = latest_checkpoint(checkpoints)
    where = (f"the last good checkpoint is {kept.name} (step {kept.name.split('-')[1]}): --resume starts there"
             if kept is not None else "no good checkpoint is left: --resume starts over")
    return NonFiniteLoss(f"{what}; {dropped}{where}")


def _weights_finite(accelerator, params: list[torch.Tensor]) -> bool:
    """Whether every process's trainable weights are finite (each checks its own, FSDP shards included)."""
    bad = sum(int((~torch.isfinite(p.detach())).any()) for p in params)
    return int(accelerator.reduce(torch.tensor(bad, device=accelerator.device), reduction="sum")) == 0


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
    feature_cache=None,
) -> Path:
    """Train `model` on the encoded `dataset` (batching.encode_records) and save it to output_dir/model.

    `on_step` is called on the main process after every optimizer step (the CLI's
    progress bar); `feature_cache` is a VisionFeatureCache to share (prepare_model). Raises NonFiniteLoss or TrainingInterrupted (after saving a checkpoint).
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
    model = prepare_model(model, config, accelerator.device, accelerator.mixed_precision, feature_cache)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = schedule(optimizer, config, total_steps)
    parameters = sum(p.numel() for p in model.parameters())
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    held = parameters_held(model)  # this process's shard under FSDP / ZeRO-3
    trainable = [p for p in model.parameters() if p.requires_grad]  # FSDP2 swapped them for sharded ones

    step, epoch, position = 0, 0, 0  # position: micro-batches of this epoch already consumed (all processes)
    unconfirmed = None  # step of the newest checkpoint while no loss of its weights has been seen
    if resume and (found := latest_checkpoint(checkpoints)) is not None:
        saved_config = json.loads((out / "train_config.json").read_text()) if (out / "train_config.json").is_file() else {}
        _check_resumable(saved_config, config, data_key)
        state = load_checkpoint(accelerator, found)
        step, epoch, position = state["step"], state["epoch"], state["position"]
        unconfirmed = step  # as after a save: its weights have yet to give a finite loss
    if accelerator.is_main_process:
        # the log holds each step once: steps after the checkpoint (all of them, without one) are redone
        _truncate_metrics(metrics_file, step)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "train_config.json", {
            **asdict(config), **(run_info or {}), "data": data_key, "world_size": world,
            "accumulation_steps": accumulation, "total_steps": total_steps, "samples": len(dataset),
            "parameters": parameters, "parameters_per_process": held,
            "mixed_precision": accelerator.mixed_precision,
            "attn_implementation": resolve_attention(config.attention, accelerator.device, accelerator.mixed_precision),
        })
    if accelerator.log_with:
        accelerator.init_trackers("sparsecut", config={k: v for k, v in asdict(config).items() if v is not None})

    collate = Collator(processor, records, images, config.on_bad_sample)
    started = time.perf_counter()

    def checkpoint() -> int:
        """Save this step; older checkpoints are pruned once its weights give a finite loss (or at the end)."""
        if not _weights_finite(accelerator, trainable):
            raise _stop_non_finite(accelerator, checkpoints, f"weights are not finite after step {step}", None)
        save_checkpoint(accelerator, checkpoints, {"step": step, "epoch": epoch, "position": position},
                        checkpoint_bytes(trainable, optimizer))
        if step == total_steps and accelerator.is_main_process:
            prune_checkpoints(checkpoints, config.keep_last)
        return step

    model.train()
    try:
        while step < total_steps:
            order = modality_length_batches(lengths, has_image, config.per_device_batch_size, seed=config.seed,
                                            epoch=epoch)[:batches_per_epoch]
            mine = order[position + rank::world]
            # A generator of its own: iter(loader) draws the workers' base seed from it, which by default is
            # torch's global RNG, the one that dropout (LoRA's) draws from. A resumed run restores that RNG
            # and then builds its iterator mid-epoch, where the uninterrupted run built none: one draw apart,
            # every dropout mask after the resume differed (issue 16 item 1).
            seeds = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, collate_fn=collate,
                                                 num_workers=config.num_workers, generator=seeds)
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
                    raise _stop_non_finite(accelerator, checkpoints, f"loss is {mean_loss} at step {step + 1}",
                                           unconfirmed)
                if unconfirmed is not None:  # the newest checkpoint's weights gave a finite loss: it is good
                    if accelerator.is_main_process:
                        prune_checkpoints(checkpoints, config.keep_last)
                    unconfirmed = None
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
                    _append_log(metrics_file, log)
                    if on_step is not None:
                        on_step(log)
                if accelerator.log_with:
                    accelerator.log({"loss": log.loss, "lr": log.lr, "grad_norm": log.grad_norm}, step=step)
                if position >= batches_per_epoch:  # the epoch is done: the next one has its own order
                    epoch, position = epoch + 1, 0
                if step % config.save_every == 0 or step == total_steps:
                    unconfirmed = checkpoint()
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
    """The trained model (LoRA merged) and processor in out/model, written to a temp folder then renamed.

    Without room for it, the partial folder is removed and CheckpointDiskFull names the last checkpoint,
    from which --resume writes the model again without training.
    """
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
        # measured before the write: save_pretrained empties the state dict it is given as it writes
        weights = state if state is not None else unwrapped.state_dict()
        expected = sum(t.numel() * t.element_size() for t in weights.values())
        try:
            unwrapped.save_pretrained(tmp, state_dict=state)
            processor.save_pretrained(tmp)
        except WRITE_ERRORS as err:
            discard_failed_write(err, out, "the trained model", tmp, expected, checkpoints=out / "checkpoints")
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
