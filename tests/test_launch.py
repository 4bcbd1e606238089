"""Launches: a multi-process launch is one distributed run or a one-line error, and the shipped accelerate
configs run as the strategy they name (FSDP shards) or say at once what they need."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sparsecut_core.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--preset", "tiny", "--data", "shapes:train:32", "--max-steps", "2", "--save-every", "1"]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without GPUs does with the launch")


def _sparsecut(launcher, args, env=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, "-m", "sparsecut_cli.app", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _torchrun(port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def _accelerate(config, port):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"presets/accelerate/{config}",
            "--num_processes", "2", "--main_process_port", str(port)]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@no_gpu
@pytest.mark.slow
def test_torchrun_of_two_processes_without_cpu_flag_is_one_gloo_ddp_run(tmp_path):
    """Without GPUs and without --cpu, two processes are one run of world size 2, not two runs of one."""
    out = tmp_path / "run"
    proc = _ok(_sparsecut(_torchrun(29521), ["pretrain", *SMALL, "--output", str(out), "--batch-size", "4",
                                             "--global-batch", "8"]))
    assert proc.stdout.count("launch: 2 processes, backend gloo, strategy DDP, device cpu") == 1, proc.stdout
    written = json.loads((out / "train_config.json").read_text())
    assert (written["world_size"], written["accumulation_steps"]) == (2, 1)
    assert written["launch"] == {"world_size": 2, "backend": "gloo", "strategy": "DDP"}
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]


@no_gpu
@pytest.mark.slow
def test_shipped_fsdp_config_shards_the_model_over_two_cpu_processes(tmp_path):
    """fsdp.yaml with --cpu: FSDP2 over gloo, each process holds half the parameters, and the sharded run
    reaches the parameters of one process with the same global batch (the preset's 16, split 8 per process)."""
    from safetensors.torch import load_file

    fsdp = _ok(_sparsecut(_accelerate("fsdp.yaml", 29523), ["pretrain", *SMALL, "--cpu", "--output",
                                                            str(tmp_path / "fsdp")]))
    assert fsdp.stdout.count("launch: 2 processes, backend gloo, strategy FSDP2 (parameters sharded)") == 1
    written = json.loads((tmp_path / "fsdp" / "train_config.json").read_text())
    assert written["launch"]["strategy"] == "FSDP2 (parameters sharded)"
    assert (written["per_device_batch_size"], written["accumulation_steps"]) == (8, 1)
    assert written["parameters_per_process"] <= written["parameters"] // 2 + 1000  # halves, up to uneven rows
    one = _ok(_sparsecut([sys.executable], ["pretrain", *SMALL, "--cpu", "--output", str(tmp_path / "one"),
                                            "--batch-size", "8"]))
    assert "launch: 1 process, backend none, strategy single process" in one.stdout
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "fsdp" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


# The variables `accelerate launch --config_file presets/accelerate/X.yaml` gives each of its 8 processes.
_RANK0 = {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
          "MASTER_PORT": "29525"}
_GPU_CONFIGS = {
    "fsdp.yaml": ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
                  "asks for FSDP2 on 8 GPUs; this machine has 0: pass --cpu"),
    "zero2.yaml": ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
                   "asks for DeepSpeed"),
}


@no_gpu
@pytest.mark.parametrize("config", sorted(_GPU_CONFIGS))
def test_a_gpu_config_on_a_machine_without_gpus_stops_at_once_with_one_line(tmp_path, config):
    env, expected = _GPU_CONFIGS[config]
    out = tmp_path / "run"
    proc = _sparsecut([sys.executable], ["pretrain", *SMALL, "--output", str(out)], env={**_RANK0, **env},
                      timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expected in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_presets_batch_is_split_over_the_processes_of_a_shipped_8_process_config():
    """The tiny preset's global batch 16 of 16 per device, on fsdp.yaml's 8 GPUs: 2 per device, not a stop."""
    config = TrainConfig(stage="pretrain", output_dir="x", learning_rate=1e-3, global_batch_size=16,
                         per_device_batch_size=16)
    assert config.fit_to(8).per_device_batch_size == 2 and config.fit_to(8).accumulation_steps(8) == 1
    assert config.fit_to(1) is config
    assert TrainConfig(**{**config.__dict__, "per_device_batch_size": 3}).fit_to(2).per_device_batch_size == 2
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        config.fit_to(3)
