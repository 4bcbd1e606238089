"""The `sparsecut` command line: thin over sparsecut_core, owns all output."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from huggingface_hub.errors import StrictDataclassError
from rich.table import Table

from sparsecut_cli.chat import chat
from sparsecut_cli.evaluate import eval_app
from sparsecut_cli.flops import flops
from sparsecut_cli.output import console, err_console, conversion_cache_dir
from sparsecut_cli.serve import serve
from sparsecut_cli.sweep import sweep_app
from sparsecut_cli.train import finetune, pretrain

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="SparseCut multimodal LLMs: build, train, evaluate, chat, serve, cost.")
app.command()(pretrain)
app.command()(finetune)
app.add_typer(eval_app, name="eval")
app.command()(chat)
app.command()(flops)
app.command()(serve)
app.add_typer(sweep_app, name="sweep")


@app.command("presets")
def presets_command() -> None:
    """List the presets shipped in presets/."""
    from sparsecut_core.presets.preset import available_presets, load_preset

    table = Table("preset", "shortcuts", "hi-res", "description")
    for name in available_presets():
        preset = load_preset(name)
        config = preset.sparsecut_config()
        table.add_row(name, str(len(config.shortcuts)), str(config.hi_res), preset.description)
    console.print(table)


@app.command()
def info(
    preset: Optional[str] = typer.Option(None, help="preset name or .toml path"),
    model: Optional[Path] = typer.Option(None, help="saved model folder"),
) -> None:
    """Show a model's shortcut pattern, views and sizes (no weights needed for a preset)."""
    if model is not None:
        from sparsecut_core.model.configuration import SparseCutConfig

        config = SparseCutConfig.from_pretrained(model)
        name = str(model)
    else:
        from sparsecut_core.presets.preset import load_preset

        config = load_preset(preset or "tiny").sparsecut_config()
        name = preset or "tiny"
    table = Table(title=f"SparseCut: {name}", show_header=False)
    table.add_row("vision", f"{config.vision_config.model_type}, {config.num_vit_layers} layers, "
                            f"width {config.vision_config.hidden_size}, {config.view_size} px")
    table.add_row("llm", f"{config.text_config.model_type}, {config.num_llm_layers} layers, "
                         f"width {config.text_config.hidden_size}")
    pattern = config.pattern if isinstance(config.pattern, str) else "explicit"
    table.add_row("pattern", f"{pattern}: " + ", ".join(f"({i},{j})" for i, j in config.shortcuts))
    table.add_row("adapter", f"{config.adapter} ({config.adapter_sharing})")
    table.add_row("views per image", f"{config.num_views} (hi_res={config.hi_res}, crop grid {config.crop_grid})")
    table.add_row("visual positions in the LLM", str(config.num_image_tokens))
    console.print(table)


@app.command()
def build(
    preset: str = typer.Option("tiny", help="preset name or .toml path"),
    out: Path = typer.Option(..., help="folder to write the model and processor to"),
    vision: Optional[str] = typer.Option(None, help="vision tower: hub id or folder (overrides the preset)"),
    llm: Optional[str] = typer.Option(None, help="LLM: hub id, folder or .gguf file (overrides the preset)"),
    seed: int = typer.Option(0, help="seed for randomly initialised parts"),
) -> None:
    """Build a preset's model before training (pretrained parts + fresh adapter) and save it."""
    from sparsecut_core.presets.build import build_from_preset
    from sparsecut_core.presets.preset import load_preset

    loaded = load_preset(preset)
    model, processor = build_from_preset(loaded, vision=vision, llm=llm, seed=seed, cache_dir=conversion_cache_dir())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"built [bold]{loaded.name}[/]: {params / 1e6:.2f}M parameters, "
                  f"shortcuts {model.config.shortcuts}, saved to {out}")


@app.command()
def shapes(
    out: Path = typer.Argument(..., help="PNG file to write"),
    index: int = typer.Option(0, "--index", "--seed", help="sample number within the split"),
    split: str = typer.Option("test", help="train, validation or test"),
    size: int = typer.Option(224, help="image side in pixels"),
) -> None:
    """Draw one sample of the built-in `shapes` data: write its image, print its caption and test question."""
    from sparsecut_core.data.shapes import shapes_sample

    sample = shapes_sample(split, index, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample.image.save(out)
    console.print(f"wrote {out}: {sample.caption}", highlight=False, soft_wrap=True)
    console.print(f"{sample.kind} question: {sample.question} answer: {sample.answer}",
                  highlight=False, soft_wrap=True)


# Loggers that only announce an optional speed-up the user did not ask for; everything else a
# library warns about still reaches the terminal.
NOISY_LOGGERS = (
    # on AVX512-BF16 CPUs, at import: "Failed to load CPU gemm_4bit_forward from kernels-community"
    # (the optional `kernels` package); bitsandbytes then uses its own CPU kernel
    "bitsandbytes.backends.cpu.ops",
)


def quiet_library_noise() -> None:
    """Keep known third-party notices (logged on import) off the terminal, below ERROR."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    """Entry point: user errors become one red line, not a traceback."""
    quiet_library_noise()
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI owns progress output
    datasets.disable_progress_bars()
    try:
        app()
    except (ValueError, OSError, KeyError, StrictDataclassError) as err:
        message = str(err.__cause__ or err).splitlines()[0] if isinstance(err, StrictDataclassError) else str(err)
        err_console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
