"""`sparsecut pretrain` and `sparsecut finetune`: SPEC's two training stages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sparsecut_cli.output import console, err_console, conversion_cache_dir

_STAGE_HELP = {
    "pretrain": "Stage 1: train the adapter on image-caption pairs (`plain` template; ViT and LLM frozen).",
    "finetune": "Stage 2: train adapter + LLM on dialogues (loss on assistant turns only; ViT frozen unless asked).",
}


def run_stage(stage: str, options: dict[str, Any]) -> None:
    from sparsecut_core.model.attention import resolve_attention
    from sparsecut_core.presets.preset import load_preset
    from sparsecut_core.presets.stage import StagePlan, plan_stage, stage_inputs
    from sparsecut_core.training.loop import NonFiniteLoss, TrainingInterrupted, train
    from sparsecut_core.training.launch import LaunchError, describe
    from sparsecut_core.training.setup import make_accelerator

    preset = load_preset(options["preset"])
    output = options["output"] or Path("runs") / f"{preset.name}-{stage}"
    plan = plan_stage(preset, stage, output, options, resume=options["resume"])
    config, data = plan.config, plan.data

    try:
        accelerator = make_accelerator(config, cpu=options["cpu"], log_dir=str(output), environ=os.environ)
    except LaunchError as stop:  # every process stops; one of them says why
        if os.environ.get("RANK", "0") == "0":
            err_console.print(f"[red]error:[/] {stop}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    main = accelerator.is_main_process
    say = console.print if main else (lambda *a, **k: None)
    launch = describe(accelerator)
    say(f"launch: {launch.world_size} process{'es' if launch.world_size > 1 else ''}, backend {launch.backend}, "
        f"strategy {launch.strategy}, device {launch.device}", highlight=False)
    if options["per_device_batch_size"] is None:  # the preset's batch, split over however many processes run
        config = config.fit_to(accelerator.num_processes)
    config.accumulation_steps(accelerator.num_processes)  # a batch that does not split stops here, before loading
    plan = StagePlan(config, plan.data, plan.images)
    inputs = stage_inputs(preset, plan, accelerator, init_from=options.get("init_from"),
                          from_llava=options.get("from_llava"), vision=options["vision"], llm=options["llm"],
                          cache_dir=conversion_cache_dir())
    dataset, skips = inputs.dataset, inputs.skips
    accumulation = config.accumulation_steps(accelerator.num_processes)
    left_out = f" ({skips.total} bad records left out, --on-bad-sample skip)" if skips.total else ""
    say(f"[bold]{stage}[/] {preset.name}: {len(dataset)} samples from {data}{left_out}, global batch "
        f"{config.global_batch_size} = {config.per_device_batch_size} x {accelerator.num_processes} processes x "
        f"{accumulation} accumulation, lr {config.learning_rate}, template {config.template}, "
        f"precision {accelerator.mixed_precision}, attention "
        f"{resolve_attention(config.attention, accelerator.device, accelerator.mixed_precision)}")

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not main,
    )
    task = progress.add_task(stage, total=None, stats="")

    def on_step(log) -> None:
        progress.update(task, completed=log.step, total=log.total_steps,
                        stats=f"loss {log.loss:.4f}  lr {log.lr:.2e}  {log.samples_per_s:.1f} samples/s  "
                              f"{log.tokens_per_s:.0f} tok/s")

    run_info = {"launch": {"world_size": launch.world_size, "backend": launch.backend, "strategy": launch.strategy},
                "preset": preset.name, "data_source": str(data), "images": plan.images,
                "init_from": str(options.get("init_from") or options.get("from_llava") or "")}
    try:
        with progress:
            final = train(inputs.model, inputs.processor, dataset, inputs.records, inputs.source, config,
                          accelerator=accelerator,
                          resume=options["resume"], run_info=run_info, on_step=on_step, skips=skips)
    except TrainingInterrupted as stop:
        err_console.print(f"[yellow]{stop}[/]")
        raise typer.Exit(130)
    except NonFiniteLoss as stop:
        err_console.print(f"[red]error:[/] {stop}")
        raise typer.Exit(1)
    finally:  # also when the run stops: what was left out is part of what it did
        if skips.total:
            say(f"[yellow]skipped {skips.total} bad samples:[/] " +
                "; ".join(f"{n} x {reason}" for reason, n in sorted(skips.skipped.items())), highlight=False)
    say(f"saved the trained model to {final} (log: {output / 'metrics.jsonl'})")


def _command(stage: str):
    def command(
        preset: str = typer.Option("tiny", help="preset name or .toml path"),
        data: Optional[str] = typer.Option(None, help="LLaVA .json/.jsonl, a `datasets` folder or parquet, or "
                                                      "shapes[:SPLIT[:N]] (built-in synthetic data)"),
        images: Optional[Path] = typer.Option(None, help="folder the records' image paths are relative to"),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="run folder (default runs/PRESET-STAGE)"),
        init_from: Optional[Path] = typer.Option(None, "--from", help="start from a saved model or an earlier run"),
        from_llava: Optional[Path] = typer.Option(None, help="start from a transformers LLaVA checkpoint"),
        vision: Optional[str] = typer.Option(None, help="vision tower hub id or folder (overrides the preset)"),
        llm: Optional[str] = typer.Option(None, help="LLM hub id, folder or .gguf file (overrides the preset)"),
        resume: bool = typer.Option(False, help="continue from the newest complete checkpoint in --output"),
        learning_rate: Optional[float] = typer.Option(None, "--lr", help="peak learning rate"),
        global_batch_size: Optional[int] = typer.Option(None, "--global-batch", help="samples per optimizer step"),
        per_device_batch_size: Optional[int] = typer.Option(None, "--batch-size", help="samples per device per pass"),
        epochs: Optional[float] = typer.Option(None),
        max_steps: Optional[int] = typer.Option(None, help="stop after this many optimizer steps"),
        warmup_ratio: Optional[float] = typer.Option(None),
        weight_decay: Optional[float] = typer.Option(None),
        max_grad_norm: Optional[float] = typer.Option(None),
        max_length: Optional[int] = typer.Option(None, help="truncate samples to this many tokens"),
        template: Optional[str] = typer.Option(None, help="vicuna_v1 | plain | chat_template"),
        seed: Optional[int] = typer.Option(None),
        save_every: Optional[int] = typer.Option(None, help="optimizer steps between checkpoints"),
        keep_last: Optional[int] = typer.Option(None, help="checkpoints to keep"),
        mixed_precision: Optional[str] = typer.Option(None, "--precision", help="auto | no | bf16 | fp16"),
        gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
        attention: Optional[str] = typer.Option(None, help="auto | sdpa | eager | flash_attention_2 (auto: "
                                                           "flash-attention 2 on a GPU when installed, else sdpa)"),
        unfreeze_vision: Optional[bool] = typer.Option(None, "--unfreeze-vision/--freeze-vision"),
        lora_r: Optional[int] = typer.Option(None, "--lora", help="finetune the LLM with LoRA of this rank"),
        qlora: Optional[bool] = typer.Option(None, "--qlora/--no-qlora", help="LoRA over a 4-bit NF4 base LLM"),
        on_bad_sample: Optional[str] = typer.Option(None, help="error | skip"),
        num_workers: Optional[int] = typer.Option(None, help="DataLoader worker processes"),
        cpu: bool = typer.Option(False, help="train on CPU even if a GPU is present"),
    ) -> None:
        run_stage(stage, dict(locals()))

    command.__doc__ = _STAGE_HELP[stage]
    command.__name__ = stage
    return command


pretrain = _command("pretrain")
finetune = _command("finetune")

__all__ = ["finetune", "pretrain", "run_stage"]
