"""Training: stage freezing, exact resume after SIGKILL, Ctrl-C and NaN stops, accumulation, 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from sparsecut_core.data.batching import encode_records
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.data.records import SkipCounter, load_records
from sparsecut_core.presets.start import starting_model
from sparsecut_core.training.config import TrainConfig
from sparsecut_core.training.loop import NonFiniteLoss, TrainingInterrupted, train
from sparsecut_core.training.setup import make_accelerator

STEPS = dict(per_device_batch_size=4, global_batch_size=8, learning_rate=1e-3, max_length=256)


# The killed runs are subprocesses with one thread; the runs in this process use one too, so that every
# step of a resumed run sums in the order of the run it is compared with (with 2 intra-op threads the
# float32 sums differed by 5e-7 at one step on a loaded machine).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _run(out, stage="pretrain", data="shapes:train:48", resume=False, init_from=None, on_step=None, **overrides):
    model, processor = starting_model(load_preset("tiny"), init_from=init_from,
                                      template="plain" if stage == "pretrain" else "vicuna_v1")
    config = TrainConfig(stage=stage, output_dir=str(out), template=processor.template,
                         **{**STEPS, "max_steps": 4, "save_every": 2, **overrides})
    records, images = load_records(data, stage=stage, image_size=112)
    dataset = encode_records(records, processor, template=config.template, max_length=config.max_length,
                             skips=SkipCounter(), cache_dir=out / "cache")
    # on CPU even where a GPU is present: the tests compare exact CPU losses and parameters
    return model, train(model, processor, dataset, records, images, config, resume=resume, on_step=on_step,
                        accelerator=make_accelerator(config, cpu=True))


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_trains_only_the_adapter_and_checkpoints_hold_only_it(tmp_path):
    before = {k: v.clone() for k, v in starting_model(load_preset("tiny"))[0].state_dict().items()}
    model, final = _run(tmp_path)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adapter"}
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "checkpoints" / "checkpoint-4" / "model.safetensors")
    assert saved and all(k.startswith("adapter.") for k in saved)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    written = json.loads((tmp_path / "train_config.json").read_text())
    assert written["accumulation_steps"] == 2 and written["total_steps"] == 4 and written["stage"] == "pretrain"
    assert (final / "config.json").is_file() and (final / "processor_config.json").is_file()


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_training import _run
    def kill(log):
        if log.step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint
    _run(Path({out!r}), max_steps=8, save_every={save_every}, on_step=kill, **{overrides!r})
""")


def _killed_run(out, kill_at: int, save_every: int, **overrides) -> None:
    """A real process that trains into `out` and SIGKILLs itself right after step `kill_at` is logged."""
    script = _KILLED_RUN.format(tests=os.path.dirname(__file__), out=str(out), kill_at=kill_at, save_every=save_every,
                                overrides=overrides)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_run_killed_with_sigkill_resumes_to_the_same_loss_curve(tmp_path):
    _run(tmp_path / "whole", max_steps=8, save_every=2)
    killed = tmp_path / "killed"
    _killed_run(killed, kill_at=5, save_every=2)
    assert len(_losses(killed)) == 5 and not (killed / "model").exists()
    _run(killed, max_steps=8, save_every=2, resume=True)  # continues from checkpoint-4
    assert _losses(killed) == _losses(tmp_path / "whole")  # identical, step for step


@pytest.mark.slow
@pytest.mark.parametrize("tuning", [{}, {"lora_r": 8}, {"lora_r": 8, "qlora": True}], ids=["full", "lora", "qlora"])
def test_finetune_killed_with_sigkill_resumes_exactly_with_workers_and_accumulation(tmp_path, tuning):
    """Killed after step 5, resumed from checkpoint-3 (mid-epoch; an epoch is 6 steps): LoRA's dropout included."""
    from safetensors.torch import load_file

    settings = dict(stage="finetune", num_workers=2, **tuning)  # accumulation 2: per device 4, global 8
    _run(tmp_path / "whole", max_steps=8, save_every=3, **settings)
    killed = tmp_path / "killed"
    _killed_run(killed, kill_at=5, save_every=3, **settings)
    assert len(_losses(killed)) == 5
    _run(killed, max_steps=8, save_every=3, resume=True, **settings)
    whole, resumed = _losses(tmp_path / "whole"), _losses(killed)
    assert len(resumed) == len(whole) == 8
    assert max(abs(a - b) for a, b in zip(whole, resumed)) <= 1e-6, (whole, resumed)
    for saved in ("checkpoints/checkpoint-8/model.safetensors", "model/model.safetensors"):
        a, b = load_file(tmp_path / "whole" / saved), load_file(killed / saved)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), saved


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_of_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    _killed_run(tmp_path, kill_at=3, save_every=8)  # steps 1-3 logged, no checkpoint yet
    assert _steps(tmp_path) == [1, 2, 3] and not (tmp_path / "checkpoints").exists()
    _run(tmp_path, max_steps=8, save_every=8, resume=True)  # starts over from step 0
    assert _steps(tmp_path) == list(range(1, 9))


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    from sparsecut_core.training.loop import StepLog, _append_log

    log = StepLog(step=1, total_steps=2, epoch=0, loss=float("nan"), lr=float("inf"), grad_norm=-float("inf"),
                  samples_per_s=3.5, tokens_per_s=10.0, elapsed_s=1.0)
    _append_log(tmp_path / "metrics.jsonl", log)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    row = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert row == {**vars(log), "loss": None, "lr": None, "grad_norm": None}


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    def interrupt(log):
        if log.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="step 3"):
        _run(tmp_path, on_step=interrupt)
    assert (tmp_path / "checkpoints" / "checkpoint-3").is_dir()
    _run(tmp_path, resume=True)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

    forward = SparseCutForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third optimizer step (one micro-batch per step)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SparseCutForConditionalGeneration, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"at step 3; checkpoint-2 held those weights and was removed; the last "
                                            r"good checkpoint is checkpoint-1 \(step 1\): --resume starts there"):
        _run(tmp_path, per_device_batch_size=8, save_every=1)
    # checkpoint-2's weights gave the NaN of step 3: only checkpoint-1's gave a finite loss
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1"]


def test_a_blow_up_keeps_the_checkpoint_before_the_huge_weights_and_resume_starts_there(tmp_path):
    """lr 1e30: step 2's update (step 1 is warmup at lr 0) makes the weights ~1e30, finite, and step 3's loss NaN."""
    from safetensors.torch import load_file

    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 3; .* the last good checkpoint is checkpoint-1 "):
        _run(tmp_path, max_steps=8, save_every=1, learning_rate=1e30)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["checkpoint-1"]
    weights = load_file(tmp_path / "checkpoints" / "checkpoint-1" / "model.safetensors")
    assert max(float(t.abs().max()) for t in weights.values()) < 1e3
    resumed = []
    with pytest.raises(NonFiniteLoss, match="at step 3"):  # same settings, same blow-up: but from step 1
        _run(tmp_path, max_steps=8, save_every=1, learning_rate=1e30, resume=True, on_step=resumed.append)
    assert [log.step for log in resumed] == [2] and math.isfinite(resumed[0].loss)
    assert _steps(tmp_path) == [1, 2]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size mounted on a folder (root and a kernel that lets the container mount)."""
    mounted = []

    def mount(folder, size: str, remount: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        options = f"remount,size={size}" if remount else f"size={size}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here to fill a disk ({proc.stderr.strip() or 'not root'})")
        mounted.append(folder)

    yield mount
    for folder in set(mounted):
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a memory map may still hold a file


def test_disk_full_during_a_checkpoint_is_one_line_and_the_previous_one_resumes(tmp_path, small_disk):
    from sparsecut_core.training.checkpoints import CheckpointDiskFull

    folder = tmp_path / "checkpoints"
    small_disk(folder, "640k")  # a tiny pretraining checkpoint takes ~424 KiB: room for one, not two
    with pytest.raises(CheckpointDiskFull) as stop:
        _run(tmp_path, max_steps=6, save_every=2)
    message = str(stop.value)
    assert isinstance(stop.value, OSError)  # the CLI prints an OSError as one red line
    assert "\n" not in message and f"no space left on the disk of {folder} for checkpoint-4" in message
    assert "MB is free; the partial checkpoint-4.tmp was removed and checkpoint-2 is intact" in message
    assert sorted(os.listdir(folder)) == ["checkpoint-2"]
    before = _losses(tmp_path)
    assert len(before) == 4  # step 4 was done, its checkpoint failed
    small_disk(folder, "4m", remount=True)  # the user frees some space
    _run(tmp_path, max_steps=6, save_every=2, resume=True)  # from checkpoint-2: steps 3 and 4 again, then 5, 6
    assert _losses(tmp_path)[:4] == before and _steps(tmp_path) == list(range(1, 7))
    assert sorted(os.listdir(folder)) == ["checkpoint-4", "checkpoint-6"]


def test_disk_full_while_saving_the_trained_model_is_one_line_and_resume_writes_it(tmp_path, small_disk):
    from sparsecut_core.training.checkpoints import CheckpointDiskFull

    run = tmp_path / "run"
    small_disk(run, "2m")  # room for the two ~424 KiB checkpoints, not for the ~3.2 MB model
    with pytest.raises(CheckpointDiskFull) as stop:
        _run(run)
    message = str(stop.value)
    assert "\n" not in message and f"no space left on the disk of {run} for the trained model" in message
    assert "the partial model.tmp was removed and checkpoint-4 is intact: free some space, then --resume" in message
    assert not (run / "model.tmp").exists() and not (run / "model").exists()
    before = _losses(run)
    small_disk(run, "16m", remount=True)  # the user frees some space
    model, final = _run(run, resume=True)  # training was done: no step again, the model is written
    assert _losses(run) == before and _steps(run) == [1, 2, 3, 4]
    assert (final / "config.json").is_file() and (final / "processor_config.json").is_file()


def _cli_pretrain(out, launcher):
    args = ["pretrain", "--preset", "tiny", "--data", "shapes:train:32", "--output", str(out), "--cpu",
            "--batch-size", "4", "--global-batch", "8", "--max-steps", "3", "--save-every", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "sparsecut_cli.app", *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((out / "train_config.json").read_text())


# On an H100 machine (torch 2.11) two `--cpu` gloo processes failed at their first barrier: rank 1
# picked CUDA device 1 ("invalid device ordinal"). CI and CPU boxes have no GPU; GPU nodes use NCCL.
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="2-process CPU training is for machines without a GPU")
def test_two_gloo_processes_reach_the_parameters_of_one(tmp_path):
    """2 processes x 1 accumulation step = 1 process x 2 accumulation steps, same global batch of 8."""
    from safetensors.torch import load_file

    one = _cli_pretrain(tmp_path / "one", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    two = _cli_pretrain(tmp_path / "two", torchrun)
    assert (one["world_size"], one["accumulation_steps"]) == (1, 2)
    assert (two["world_size"], two["accumulation_steps"]) == (2, 1)
    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "two"), rel=1e-4)


def test_resume_refuses_changed_settings(tmp_path):
    _run(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="learning_rate was 0.001"):
        _run(tmp_path, max_steps=4, resume=True, learning_rate=2e-3)


def test_finetune_from_pretrain_lowers_the_loss_and_trains_the_llm(tmp_path):
    _run(tmp_path / "pre", max_steps=2)
    before = starting_model(load_preset("tiny"), init_from=tmp_path / "pre")[0].state_dict()
    model, _ = _run(tmp_path / "ft", stage="finetune", init_from=tmp_path / "pre", max_steps=12,
                    learning_rate=2e-3, data="shapes:train:96")
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adapter", "language_model"}
    losses = _losses(tmp_path / "ft")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_lora_finetune_saves_a_merged_model(tmp_path):
    from sparsecut_core.inference.loading import load_pretrained

    model, final = _run(tmp_path, stage="finetune", lora_r=4, max_steps=2, learning_rate=1e-2)
    loaded, _ = load_pretrained(final)
    assert not any("lora" in k for k in loaded.state_dict())
    base = starting_model(load_preset("tiny"))[0].state_dict()
    name = "language_model.model.layers.0.layer.self_attn.q_proj.weight"
    assert not torch.equal(loaded.state_dict()[name], base[name])


def test_finetune_can_start_from_a_transformers_llava_checkpoint(tmp_path):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration

    from conftest import tiny_text_config, tiny_vision_config
    from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

    tokenizer = build_word_tokenizer(TINY_VOCAB)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(vocab_size=len(tokenizer)),
                         image_token_id=image_token_id)
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        tmp_path / "llava")

    model, processor = starting_model(load_preset("tiny"), from_llava=tmp_path / "llava", template="vicuna_v1")
    assert model.config.image_token_id == image_token_id and model.config.hi_res  # the preset's design
    assert processor.num_image_tokens == 16 and processor.image_token_id == image_token_id
    records, images = load_records("shapes:train:2", stage="finetune", image_size=56)
    dataset = encode_records(records, processor, template="vicuna_v1", max_length=512, skips=SkipCounter())
    from sparsecut_core.data.batching import Collator

    batch = Collator(processor, records, images)([dataset[0], dataset[1]])
    batch.pop("bad_samples")
    assert torch.isfinite(model(**batch).loss)


def test_qlora_trains_lora_beside_a_4bit_base_and_saves_it_merged(tmp_path):
    import bitsandbytes as bnb

    from sparsecut_core.inference.loading import load_pretrained

    _, final = _run(tmp_path, stage="finetune", lora_r=4, qlora=True, max_steps=2, learning_rate=1e-2)
    loaded, _ = load_pretrained(final)
    layer = loaded.language_model.model.layers[0].layer.self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit) and not any("lora" in k for k in loaded.state_dict())
    assert all(math.isfinite(loss) for loss in _losses(tmp_path))
