"""How a run is launched: what the launcher asked for, what this machine can give, and what the run then is.

`torchrun` and `accelerate launch` only set environment variables; accelerate then picks
the device and backend. Two of its choices are silent and wrong for us, so they are
decided here first, from the launcher's variables (handed in by the caller) and the
machine:

- a multi-process launch on a machine without GPUs, without `cpu=True`, becomes
  `world_size` independent single-process runs in accelerate (its gloo path is taken
  only when told "cpu"); here it is a CPU launch, so it becomes one gloo DDP run;
- an FSDP config on CPU processes becomes plain DDP in accelerate (it turns FSDP on for
  GPU-like devices only); here FSDP2, which torch runs over gloo, is turned on for them.

What cannot run says so at once (LaunchError, one line): an FSDP or DeepSpeed config that
names GPUs on a machine without them, more processes on a node than it has GPUs,
DeepSpeed without the package or on CPU, FSDP1 on CPU.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Mapping

CPU_CONFIG = "presets/accelerate/cpu2.yaml"


class LaunchError(ValueError):
    """The launch cannot run as asked on this machine; the message says what it needs."""


@dataclass(frozen=True)
class LaunchRequest:
    """What the launcher's environment asks for (torchrun's and accelerate launch's variables)."""

    world_size: int = 1
    local_world_size: int = 1
    fsdp: bool = False
    fsdp_version: int = 1
    deepspeed: bool = False
    cpu: bool = False  # `accelerate launch --cpu` or a config with use_cpu: true

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LaunchRequest:
        world = int(environ.get("WORLD_SIZE", "1"))
        return cls(
            world_size=world,
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", str(world))),
            fsdp=_flag(environ, "ACCELERATE_USE_FSDP"),
            fsdp_version=int(environ.get("FSDP_VERSION", "1")),
            deepspeed=_flag(environ, "ACCELERATE_USE_DEEPSPEED"),
            cpu=_flag(environ, "ACCELERATE_USE_CPU"),
        )


@dataclass(frozen=True)
class Launch:
    """What a run is, read back from the accelerator that runs it (printed once by the CLI)."""

    world_size: int
    backend: str  # gloo, nccl, ... or "none" for one process
    strategy: str  # single process, DDP, FSDP2 (parameters sharded), DeepSpeed ZeRO-N
    device: str  # cpu, cuda, ...


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _wanted(request: LaunchRequest) -> str:
    return "DeepSpeed" if request.deepspeed else f"FSDP{request.fsdp_version}" if request.fsdp else "DDP"


def plan_device(request: LaunchRequest, cpu: bool, gpus: int, has_distributed_device: bool) -> bool:
    """Whether the run goes on CPU processes; raises LaunchError where the launch cannot run here.

    `gpus`: accelerator devices this node has; `has_distributed_device`: whether accelerate knows a
    distributed backend for that device (NCCL for CUDA, ...). Without one, a multi-process launch is
    a CPU launch (gloo), never `world_size` unrelated single-process runs.
    """
    on_cpu = cpu or request.cpu or not has_distributed_device
    if request.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed")
    if (request.fsdp or request.deepspeed) and on_cpu and not (cpu or request.cpu):
        raise LaunchError(f"the accelerate config asks for {_wanted(request)} on {request.local_world_size} GPUs; "
                          f"this machine has {gpus}: pass --cpu to run it on CPU processes (gloo), or use "
                          f"{CPU_CONFIG}")
    if request.deepspeed and on_cpu:
        raise LaunchError(f"DeepSpeed needs GPUs (--cpu was given): use FSDP (fsdp_version: 2) or {CPU_CONFIG}")
    if request.fsdp and on_cpu and request.fsdp_version != 2:
        raise LaunchError(f"FSDP{request.fsdp_version} needs GPUs; on CPU processes set fsdp_version: 2 in the config")
    if not on_cpu and request.local_world_size > gpus:
        raise LaunchError(f"{request.local_world_size} processes on this node but it has {gpus} GPUs: launch "
                          f"{gpus} (--nproc_per_node / num_processes), or pass --cpu")
    return on_cpu


def describe(accelerator) -> Launch:
    """The launch as accelerate runs it: reported from its state, so it never names a strategy it is not using."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    world = accelerator.num_processes
    if kind == DistributedType.FSDP:
        strategy = "FSDP2 (parameters sharded)" if accelerator.is_fsdp2 else "FSDP1 (parameters sharded)"
    elif kind == DistributedType.DEEPSPEED:
        strategy = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    elif world > 1:
        strategy = "DDP"
    else:
        strategy = "single process"
    backend = accelerator.state.backend if world > 1 else None
    return Launch(world_size=world, backend=backend or "none", strategy=strategy, device=accelerator.device.type)


def check_launch(request: LaunchRequest, launch: Launch) -> None:
    """The run is what was launched: as many processes, and the strategy the config asked for."""
    if launch.world_size != request.world_size:
        raise LaunchError(f"launched {request.world_size} processes but each runs as {launch.world_size} of "
                          f"{launch.world_size} ({launch.strategy}); stopping rather than train copies side by side")
    if request.fsdp and not launch.strategy.startswith("FSDP"):
        raise LaunchError(f"the accelerate config asks for FSDP but this run would be {launch.strategy}")
    if request.deepspeed and not launch.strategy.startswith("DeepSpeed"):
        raise LaunchError(f"the accelerate config asks for DeepSpeed but this run would be {launch.strategy}")


def parameters_held(model) -> int:
    """Parameter elements this process holds: its shard under FSDP2 (DTensor) or ZeRO-3, all of them otherwise."""
    held = 0
    for param in model.parameters():
        if hasattr(param, "to_local"):
            held += param.to_local().numel()
        elif hasattr(param, "ds_tensor"):
            held += param.ds_tensor.numel()
        else:
            held += param.numel()
    return held
