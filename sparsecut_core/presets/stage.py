"""One training stage of a preset, composed: its settings, its starting model and data, then the loop.

The pieces a caller needs to speak in between (the CLI prints the launch and the data
before training starts) are separate: `plan_stage` (settings and data source, no I/O),
`stage_inputs` (model, processor, records, encoded dataset), and `train_stage`, which
runs all of it for callers that have nothing to say in between (a sweep).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from ..data.batching import encode_records
from ..data.records import SkipCounter, load_records
from ..training.config import TrainConfig
from ..training.loop import StepLog, train
from ..training.setup import make_accelerator
from .preset import Preset
from .start import starting_model


@dataclass(frozen=True)
class StagePlan:
    """What a stage will train with: its settings and where its data comes from."""

    config: TrainConfig
    data: str
    images: str | None


@dataclass
class StageInputs:
    model: Any
    processor: Any
    records: list
    source: Any  # the records' image resolver
    dataset: Any  # the encoded samples (batching.encode_records)
    skips: SkipCounter


def stage_settings(stage: str, preset: Preset, given: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields: its defaults <- the preset's [train.STAGE] <- `given` (None: not given)."""
    names = {f.name for f in fields(TrainConfig)}
    stage_defaults = {k: v for k, v in preset.train.get(stage, {}).items() if k in names}
    chosen = {k: v for k, v in given.items() if v is not None and k in names}
    settings = {**stage_defaults, **chosen, "stage": stage}
    settings.setdefault("template", "plain" if stage == "pretrain" else preset.template)
    return settings


def plan_stage(
    preset: Preset, stage: str, output: str | Path, given: dict[str, Any] | None = None, *, resume: bool = False
) -> StagePlan:
    """The stage's settings and data (`given` may hold TrainConfig fields, `data` and `images`); raises
    ValueError without data, or when `output` holds an earlier run and `resume` is off."""
    given = given or {}
    stage_defaults = preset.train.get(stage, {})
    data = given.get("data") or stage_defaults.get("data")
    if data is None:
        raise ValueError(f"--data is required (preset {preset.name} names no {stage} data)")
    images = given.get("images") or stage_defaults.get("images")
    config = TrainConfig.from_dict({**stage_settings(stage, preset, given), "output_dir": str(output)})
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not resume:
        raise ValueError(f"{output} is not empty: pass --resume to continue that run, or choose another --output")
    return StagePlan(config, str(data), str(images) if images is not None else None)


def stage_inputs(
    preset: Preset,
    plan: StagePlan,
    accelerator,
    *,
    init_from: str | Path | None = None,
    from_llava: str | Path | None = None,
    vision: str | None = None,
    llm: str | None = None,
    cache_dir: str | Path | None = None,
) -> StageInputs:
    """The starting model and processor (start.py), the records at the processor's view size, encoded
    (one process tokenizes, the others read its cache in output_dir/cache)."""
    config = plan.config
    model, processor = starting_model(preset, init_from=init_from, from_llava=from_llava, vision=vision, llm=llm,
                                      seed=config.seed, template=config.template, cache_dir=cache_dir)
    skips = SkipCounter(config.on_bad_sample)
    records, source = load_records(plan.data, images=plan.images, stage=config.stage,
                                   image_size=processor.full_view_size, skips=skips)
    with accelerator.main_process_first():
        dataset = encode_records(records, processor, template=config.template, max_length=config.max_length,
                                 skips=skips, cache_dir=Path(config.output_dir) / "cache")
    return StageInputs(model, processor, records, source, dataset, skips)


def train_stage(
    preset: Preset,
    stage: str,
    output: str | Path,
    *,
    given: dict[str, Any] | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    cpu: bool = False,
    cache_dir: str | Path | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    feature_cache=None,
) -> Path:
    """The stage trained into `output` (resumed from its newest checkpoint with `resume`); the saved model's
    folder. `feature_cache`: a VisionFeatureCache shared with other runs of the same frozen tower."""
    plan = plan_stage(preset, stage, output, given, resume=resume)
    accelerator = make_accelerator(plan.config, cpu=cpu, log_dir=str(output))
    if (given or {}).get("per_device_batch_size") is None:  # the preset's batch, split over the processes
        plan = StagePlan(plan.config.fit_to(accelerator.num_processes), plan.data, plan.images)
    inputs = stage_inputs(preset, plan, accelerator, init_from=init_from, cache_dir=cache_dir)
    run_info = {"preset": preset.name, "data_source": plan.data, "images": plan.images,
                "init_from": str(init_from or "")}
    return train(inputs.model, inputs.processor, inputs.dataset, inputs.records, inputs.source, plan.config,
                 accelerator=accelerator, resume=resume, run_info=run_info, on_step=on_step, skips=inputs.skips,
                 feature_cache=feature_cache)
