"""Resumable training checkpoints: written atomically, the last K kept, the newest complete one found.

A checkpoint is accelerate's `save_state` (trainable weights, optimizer, scheduler,
every process's RNG) plus our `trainer_state.json` (step, epoch, position in the
epoch's batch order). It is written to `checkpoint-N.tmp` and renamed when complete,
so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..files import write_json_atomic

STATE_FILE = "trainer_state.json"
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


def save_checkpoint(accelerator, root: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Save the accelerator's state and `state` as checkpoint-{state['step']}; prune to `keep_last`."""
    final = root / f"checkpoint-{state['step']}"
    if (final / STATE_FILE).is_file():  # already saved at this step (e.g. Ctrl-C right after a save)
        return final
    tmp = root / f"checkpoint-{state['step']}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        os.replace(tmp, final)
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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
