"""Resumable training checkpoints: written atomically, the last K kept, the newest complete one found.

A checkpoint is accelerate's `save_state` (trainable weights, optimizer, scheduler,
every process's RNG) plus our `trainer_state.json` (step, epoch, position in the
epoch's batch order). It is written to `checkpoint-N.tmp` and renamed when complete,
so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..files import write_json_atomic

STATE_FILE = "trainer_state.json"
_SLACK = 1 << 20  # RNG states, scheduler, trainer state and file system overhead
_NAME = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


# What a write that runs out of space raises: OSError from Python, RuntimeError from torch.save
# (inline_container), SafetensorError ("No space left on device (os error 28)") from safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class CheckpointDiskFull(OSError):
    """No room for a checkpoint or the trained model: the partial folder is removed, what was saved before is intact."""


def discard_failed_write(
    err: BaseException, root: Path, what: str, partial: Path, expected_bytes: int, checkpoints: Path
) -> None:
    """After a write of `what` into the folder `partial` under `root` failed with `err`: remove `partial`,
    then, if the write failed for want of space, raise CheckpointDiskFull (one line, naming the newest
    checkpoint in `checkpoints`); otherwise return, for the caller to re-raise `err`.

    A full disk is an ENOSPC/EDQUOT OSError, or any of WRITE_ERRORS while less than `expected_bytes`
    (the estimate the message quotes) is free once the partial folder is gone.
    """
    shutil.rmtree(partial, ignore_errors=True)
    free = shutil.disk_usage(root).free
    if not ((isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or free < expected_bytes):
        return
    previous = latest_checkpoint(checkpoints) if checkpoints.is_dir() else None
    raise CheckpointDiskFull(
        f"no space left on the disk of {root} for {what}: it needs about {_megabytes(expected_bytes)}, "
        f"{_megabytes(free)} is free; the partial {partial.name} was removed and "
        + (f"{previous.name} is intact" if previous else "no earlier checkpoint exists")
        + ": free some space, then --resume") from err


def checkpoint_bytes(params, optimizer) -> int:
    """About what a checkpoint of these trainable parameters and their optimizer state takes on disk."""
    tensors = [*params, *(t for group in optimizer.state.values() for t in group.values() if torch.is_tensor(t))]
    return sum(t.numel() * t.element_size() for t in tensors) + _SLACK


def save_checkpoint(accelerator, root: Path, state: dict[str, Any], expected_bytes: int = 0) -> Path:
    """Save the accelerator's state and `state` as checkpoint-{state['step']}.

    Older checkpoints are left for `prune_checkpoints`, called once this one's weights
    have given a finite loss: the one before it must survive until then. A write that
    fails for want of space (`expected_bytes` is the estimate the message quotes) removes
    the partial folder and raises CheckpointDiskFull.
    """
    final = root / f"checkpoint-{state['step']}"
    if (final / STATE_FILE).is_file():  # already saved at this step (e.g. Ctrl-C right after a save)
        return final
    tmp = root / f"checkpoint-{state['step']}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, state)
    except WRITE_ERRORS as err:
        discard_failed_write(err, root, final.name, tmp, expected_bytes, checkpoints=root)
        raise
    if accelerator.is_main_process:
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints (all of them when keep_last <= 0); main process only."""
    for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)


def remove_checkpoint(root: Path, step: int) -> None:
    """Delete checkpoint-{step}, renaming it first so that a crash midway never leaves a half of it complete."""
    path = root / f"checkpoint-{step}"
    if path.is_dir():
        doomed = path.with_name(path.name + ".tmp")
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(path, doomed)
        shutil.rmtree(doomed)


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore the accelerator's state from `path`; returns its trainer state."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(str(path), strict=False)  # only the trainable weights are saved
    return json.loads(state_file.read_text())


def keep_trainable_weights(models, weights, output_dir) -> None:
    """accelerate save-state hook: store only the parameters that train (frozen ones come from the base)."""
    for k, model in enumerate(models[:len(weights)]):  # FSDP: none here, accelerate writes the shards itself
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[k] = {name: tensor for name, tensor in weights[k].items() if name in trainable}
