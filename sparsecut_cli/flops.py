"""`sparsecut flops`: prefill FLOPs of LLaVA, concatenated multi-view LLaVA and SparseCut for a preset."""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sparsecut_cli.output import console, err_console

PLOT_GRIDS = (1, 2, 3, 4)
# one image with a short VQA prompt: template, question and answer instruction
DEFAULT_TEXT_TOKENS = 64


def flops(
    preset: str = typer.Option("tiny", help="preset name or .toml path"),
    hi_res: bool = typer.Option(False, "--hi-res", help="add llava-concat and SparseCut with hi-res fusion"),
    text_tokens: int = typer.Option(
        DEFAULT_TEXT_TOKENS, min=1,
        help="text positions in the prompt besides the image (the default: a short VQA prompt with its template)",
    ),
    pattern: Optional[str] = typer.Option(None, help="shortcut pattern of the sparsecut rows (default: the preset's)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the table"),
    plot: Optional[Path] = typer.Option(
        None, help="also write a PNG: llava-concat vs SparseCut total FLOPs for 1x1..4x4 crop grids"
    ),
) -> None:
    """Prefill FLOPs of llava, llava-concat and SparseCut, split into vision / adapter / LLM.

    Counted on PyTorch's meta device (no weights, no downloads), 2 FLOPs per multiply-accumulate:
    the ViT over all views, every adapter application, the LLM over visual + text positions, the LM head on the last.
    llava-concat puts all 1 + crops views' tokens in the context; SparseCut fuses them and keeps M_v positions.
    """
    from sparsecut_core.cost.flops import MetaCounter, concat_ratio, crop_grid_sweep, preset_costs
    from sparsecut_core.presets.preset import load_preset

    if plot is not None:
        _require_matplotlib()
    loaded = load_preset(preset)
    counter = MetaCounter()  # the table and the plot share meta models and counted passes
    rows = preset_costs(loaded, hi_res=hi_res, text_tokens=text_tokens, pattern=pattern, counter=counter)
    if as_json:
        payload = {"preset": loaded.name, "text_tokens": text_tokens, "rows": [row.as_dict() for row in rows]}
        typer.echo(json.dumps(payload))  # stdout holds this object and nothing else
    else:
        console.print(_table(loaded.name, text_tokens, rows))
        ratio = concat_ratio(rows)
        if ratio is not None:
            console.print(f"llava-concat / sparsecut (hi-res) total FLOPs: [bold]{ratio:.2f}x[/]")
    if plot is not None:
        sweep = crop_grid_sweep(loaded, text_tokens=text_tokens, pattern=pattern, grids=PLOT_GRIDS, counter=counter)
        write_plot(plot, sweep, loaded.name, text_tokens)
        (err_console if as_json else console).print(f"wrote {plot}")


def _table(name: str, text_tokens: int, rows) -> Table:
    scale, unit = _flops_unit(max(row.flops.total for row in rows))
    table = Table(title=f"Prefill {unit}: {name}, 1 image + {text_tokens} text tokens",
                  caption="visual: image positions in the LLM context")
    table.add_column("method", no_wrap=True)
    for column in ("visual", "params", "vision", "adapter", "LLM", "total"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        parts = (row.flops.vision, row.flops.adapter, row.flops.llm, row.flops.total)
        method = "sparsecut hi-res" if row.method == "sparsecut" and row.hi_res else row.method
        table.add_row(method, str(row.context_visual_tokens),
                      _params(row.params), *(f"{value / scale:.3f}" for value in parts))
    return table


def _flops_unit(largest: int) -> tuple[float, str]:
    # real presets cost TFLOPs, the tiny one MFLOPs
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs")):
        if largest >= scale:
            return scale, unit
    return 1e6, "MFLOPs"


def _params(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M"


def _require_matplotlib() -> None:
    try:
        importlib.import_module("matplotlib")  # before minutes of counting, not after
    except ImportError as err:
        raise ValueError("--plot needs matplotlib: pip install 'sparsecut[plot]'") from err


def write_plot(path: Path, sweep, preset_name: str, text_tokens: int) -> None:
    """Total FLOPs of llava-concat and SparseCut per crop grid, as a PNG written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    grids = [f"{g}x{g}\n({concat.context_visual_tokens} vs {sparse.context_visual_tokens} tok)"
             for g, concat, sparse in sweep]
    scale, unit = _flops_unit(max(concat.flops.total for _, concat, _ in sweep))
    concat_totals = [concat.flops.total / scale for _, concat, _ in sweep]
    sparse_totals = [sparse.flops.total / scale for _, _, sparse in sweep]

    fig = Figure(figsize=(7, 4.5), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(grids, concat_totals, marker="o", linewidth=2, label="LLaVA, all views concatenated")
    ax.plot(grids, sparse_totals, marker="s", linewidth=2, label="SparseCut, hi-res fusion")
    for x, (c, s) in enumerate(zip(concat_totals, sparse_totals)):
        ax.annotate(f"{c / s:.1f}x", (x, c), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=9)
    ax.set_xlabel("high-resolution crop grid (visual positions in the LLM: concat vs SparseCut)")
    ax.set_ylabel(f"prefill {unit}")
    ax.set_title(f"Prefill cost vs. resolution: {preset_name}, 1 image + {text_tokens} text tokens")
    ax.set_ylim(0, 1.15 * max(concat_totals + sparse_totals))  # headroom for the ratio labels
    ax.text(0.99, 0.02, "labels: llava-concat / SparseCut total", transform=ax.transAxes, ha="right",
            fontsize=8, color="0.4")
    ax.grid(True, alpha=0.3)
    ax.legend()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
