"""A sweep run end to end on a shrunken `tiny` preset: its folders, sweep.json and sweep.md, the features its
variants share, reuse of finished variants, a failing variant, and resume after a failure or a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sparsecut_cli.app import app
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.sweep.runner import DONE_FILE, SweepProgress, SweepSpec, load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"data": "shapes:train:32", "global_batch_size": 8, "per_device_batch_size": 8, "save_every": 2,
         "cache_vision_features": True}
SPEC = SweepSpec(preset="tiny", patterns=("llava", "sparse-uniform"), hi_res=(False,), seeds=(0,), limit=6)


def small_tiny():
    preset = load_preset("tiny")
    return dataclasses.replace(preset, train={stage: {**s, **SMALL} for stage, s in preset.train.items()})


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_two_variant_sweep_writes_its_folders_json_and_table_and_shares_the_tower(tmp_path):
    report = run_sweep(small_tiny(), SPEC, tmp_path, cpu=True)
    assert [r.status for r in report.results] == ["done", "done"]
    data = load_sweep(tmp_path)
    first, second = data["variants"]
    assert (first["name"], second["name"]) == ("llava-hires-off-seed0", "sparse-uniform-n3-hires-off-seed0")
    for variant in data["variants"]:
        folder = tmp_path / variant["name"]
        assert (folder / DONE_FILE).is_file() and (folder / "finetune" / "model").is_dir()
        assert (folder / "eval" / "results.json").is_file()
        assert set(variant["scores"]) == {"true", "deranged", "blank"}
        assert "accuracy/colour" in variant["scores"]["true"]
        assert variant["stages"]["finetune"]["steps"] == 4 and variant["stages"]["pretrain"]["steps"] == 4
        assert variant["settings"]["pairs"] and variant["wall_s"] > 0
    assert second["settings"]["pairs"] == [[5, 1], [3, 3], [1, 5]]
    # the second variant read every image from the features the first one computed (one tower, one seed)
    assert first["features"]["images_computed"] == first["features"]["distinct_images"] > 0
    assert second["features"]["images_computed"] == 0
    assert second["features"]["from_other_variants"] == second["features"]["distinct_images"]
    table = (tmp_path / "sweep.md").read_text()
    assert "| llava |  | off | 1 |" in table and "| sparse-uniform | 3 | off | 1 |" in table
    assert "vs llava" in table and "deranged" in table


def test_a_rerun_reuses_finished_variants_and_a_longer_list_runs_only_the_new_one(tmp_path):
    run_sweep(small_tiny(), SPEC, tmp_path, cpu=True)
    done = tmp_path / "llava-hires-off-seed0" / DONE_FILE
    stamp = done.stat().st_mtime_ns
    longer = dataclasses.replace(SPEC, patterns=("llava", "sparse-uniform", "sparse-bottom"))
    report = run_sweep(small_tiny(), longer, tmp_path, cpu=True)
    assert report.ran == ["sparse-bottom-n3-hires-off-seed0"]
    assert done.stat().st_mtime_ns == stamp
    assert [v["status"] for v in load_sweep(tmp_path)["variants"]] == ["done"] * 3


def test_a_further_seed_joins_the_table_of_the_seeds_finished_before(tmp_path):
    llava = dataclasses.replace(SPEC, patterns=("llava",))
    run_sweep(small_tiny(), llava, tmp_path, cpu=True)
    report = run_sweep(small_tiny(), dataclasses.replace(llava, seeds=(1,)), tmp_path, cpu=True)
    assert report.ran == ["llava-hires-off-seed1"]
    names = [v["name"] for v in load_sweep(tmp_path)["variants"]]
    assert names == ["llava-hires-off-seed1", "llava-hires-off-seed0"]
    assert "| llava |  | off | 2 |" in (tmp_path / "sweep.md").read_text()
    # variants scored another way are no part of this table
    other = dataclasses.replace(llava, seeds=(2,), max_new_tokens=4)
    run_sweep(small_tiny(), other, tmp_path, cpu=True)
    assert [v["name"] for v in load_sweep(tmp_path)["variants"]] == ["llava-hires-off-seed2"]
    # nor are variants trained by the preset before it changed
    edited = small_tiny()
    edited = dataclasses.replace(edited, train={s: {**c, "learning_rate": 5e-4} for s, c in edited.train.items()})
    run_sweep(edited, dataclasses.replace(llava, seeds=(3,)), tmp_path, cpu=True)
    assert [v["name"] for v in load_sweep(tmp_path)["variants"]] == ["llava-hires-off-seed3"]


class _FailOnce(SweepProgress):
    """Raises at finetuning step 3 of the first variant (its checkpoint-2 saved), once."""

    def __init__(self):
        self.stage, self.variant, self.failed, self.steps = None, None, False, []

    def variant_started(self, variant, index, total, stage):
        self.variant, self.stage = variant.name, stage

    def step(self, log):
        if self.stage == "finetune":
            self.steps.append((self.variant, log.step))
        if not self.failed and self.stage == "finetune" and self.variant.startswith("llava") and log.step == 3:
            self.failed = True
            raise RuntimeError("the machine ran out of something")


def test_a_failing_variant_is_reported_the_others_run_and_a_rerun_resumes_it_from_its_checkpoint(tmp_path):
    fault = _FailOnce()
    report = run_sweep(small_tiny(), SPEC, tmp_path / "sweep", cpu=True, progress=fault)
    failed, done = report.results
    assert (failed.status, done.status) == ("failed", "done")
    assert "RuntimeError: the machine ran out of something" in failed.error
    assert "llava-hires-off-seed0: RuntimeError" in (tmp_path / "sweep" / "sweep.md").read_text()

    again = _FailOnce()
    again.failed = True  # no fault this time
    report = run_sweep(small_tiny(), SPEC, tmp_path / "sweep", cpu=True, progress=again)
    assert report.ran == ["llava-hires-off-seed0"] and not report.failed
    assert report.results[0].resumed
    assert [s for v, s in again.steps] == [3, 4]  # from checkpoint-2, not from the start
    # the resumed variant trained exactly as one never stopped
    run_sweep(small_tiny(), dataclasses.replace(SPEC, patterns=("llava",)), tmp_path / "whole", cpu=True)
    resumed = _losses(tmp_path / "sweep" / "llava-hires-off-seed0" / "finetune")
    whole = _losses(tmp_path / "whole" / "llava-hires-off-seed0" / "finetune")
    assert resumed == pytest.approx(whole, abs=1e-6)


def test_a_finished_variant_of_other_settings_is_reported_not_reused(tmp_path):
    run_sweep(small_tiny(), dataclasses.replace(SPEC, patterns=("llava",)), tmp_path, cpu=True)
    other = dataclasses.replace(SPEC, patterns=("llava",), max_new_tokens=4)
    (result,) = run_sweep(small_tiny(), other, tmp_path, cpu=True).results
    assert result.status == "failed" and "holds a finished run of other settings" in result.error


def test_sweep_show_prints_the_table_and_a_folder_without_one_is_a_one_line_error(tmp_path):
    run_sweep(small_tiny(), dataclasses.replace(SPEC, patterns=("llava",)), tmp_path, cpu=True)
    result = CliRunner().invoke(app, ["sweep", "show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| llava |  | off | 1 |" in result.output
    proc = subprocess.run([sys.executable, "-m", "sparsecut_cli.app", "sweep", "show", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no sweep.json" in proc.stderr and "Traceback" not in proc.stderr


def _small_tiny_toml(path: Path, samples: int) -> Path:
    text = (ROOT / "presets" / "tiny.toml").read_text()
    for old, new in (('data = "shapes:train:2048"', f'data = "shapes:train:{samples}"'),
                     ('data = "shapes:train:4096"', f'data = "shapes:train:{samples}"'),
                     ("global_batch_size = 16", "global_batch_size = 8"),
                     ("per_device_batch_size = 16", "per_device_batch_size = 8"),
                     ("save_every = 50", "save_every = 2")):
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_sweep_killed_mid_variant_resumes_it_from_its_checkpoint_and_matches_an_unbroken_one(tmp_path):
    preset = _small_tiny_toml(tmp_path / "small.toml", samples=128)  # 16 steps a stage
    command = [sys.executable, "-m", "sparsecut_cli.app", "sweep", "--preset", str(preset), "--patterns", "llava",
               "--hi-res", "off", "--seeds", "0", "--limit", "6", "--cpu"]
    finetune = tmp_path / "killed" / "llava-hires-off-seed0" / "finetune"
    proc = subprocess.Popen(command + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (finetune / "checkpoints" / "checkpoint-4").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (finetune / "model").exists() and not (finetune.parent / DONE_FILE).exists()
    for out in ("killed", "whole"):
        done = subprocess.run(command + ["--out", str(tmp_path / out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (killed,) = load_sweep(tmp_path / "killed")["variants"]
    (whole,) = load_sweep(tmp_path / "whole")["variants"]
    assert killed["status"] == "done" and killed["resumed"]
    assert _losses(finetune) == pytest.approx(_losses(tmp_path / "whole" / "llava-hires-off-seed0" / "finetune"),
                                              abs=1e-6)
    assert killed["scores"] == whole["scores"]
