"""`sparsecut sweep`: the paper's ablations (shortcut patterns, hi-res fusion, shortcut counts, seeds) trained
and evaluated in one command; `sparsecut sweep show DIR` prints a finished sweep's table again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sparsecut_cli.evaluate import DefaultCommandGroup
from sparsecut_cli.output import console, err_console, conversion_cache_dir

# The paper's Table 3 (LLaVA, D+B, D+U, S+B, S+T, S+RU, S+U) and the quick subset: baseline, U-shape, aligned.
ALL_PATTERNS = "llava,sparse-uniform,sparse-reverse-uniform,sparse-bottom,sparse-top,dense-uniform,dense-bottom"
QUICK_PATTERNS = "llava,sparse-uniform,sparse-reverse-uniform"
DEFAULT_PRESET = "sweep-dinov2"

class _SweepGroup(DefaultCommandGroup):
    """`sparsecut sweep` alone runs the default sweep too."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, args or [self.default_command])


sweep_app = typer.Typer(
    cls=_SweepGroup,
    help="Train and evaluate every combination of shortcut pattern, hi-res, count and seed "
         "(`sparsecut sweep --out DIR`), or print a sweep's table (`sparsecut sweep show DIR`).",
)


def _on_off(text: str) -> tuple[bool, ...]:
    values = {"off": False, "on": True}
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    if not chosen or any(v not in values for v in chosen):
        raise ValueError(f"--hi-res: expected off, on or off,on; got {text!r}")
    return tuple(dict.fromkeys(values[v] for v in chosen))


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option}: give at least one value")
    return values


class _Progress:
    """Draws the sweep: one line per finished variant, a bar for the stage that runs."""

    def __init__(self, bar: Progress):
        self.bar, self.task, self.started = bar, None, time.perf_counter()

    def variant_started(self, variant, index: int, total: int, stage: str) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(f"[{index + 1}/{total}] {variant.name} {stage}", total=None, stats="")

    def step(self, log) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=log.step, total=log.total_steps, stats=f"loss {log.loss:.3f}")

    def variant_finished(self, result, reused: bool) -> None:
        if result.status == "failed":
            self.bar.console.print(f"[red]failed[/] {result.name}: {result.error}", highlight=False, soft_wrap=True)
            return
        true, deranged = result.scores["true"]["accuracy"], result.scores["deranged"]["accuracy"]
        how = "done before" if reused else f"{result.wall_s:.0f} s"
        self.bar.console.print(f"{result.name}: {true:.1f} true, {deranged:.1f} deranged ({how})", highlight=False)


def _print_table(markdown: str) -> None:
    """sweep.md as written: a wide table stays one line per row (pipe it to a file, or read sweep.md)."""
    console.print(markdown, markup=False, highlight=False, soft_wrap=True)


def _write_plot(out: Path, data: dict) -> Optional[Path]:
    from sparsecut_core.sweep.report import plot_sweep

    try:
        return plot_sweep(data, out / "sweep.png")
    except ValueError as why:  # no matplotlib, or nothing finished: the table still stands
        err_console.print(f"[yellow]no sweep.png:[/] {why}", highlight=False)
        return None


@sweep_app.command("run")
def run(
    out: Path = typer.Option(Path("runs/sweep"), "--out", "-o", help="sweep folder (one subfolder per variant)"),
    preset: str = typer.Option(DEFAULT_PRESET, help="preset name or .toml path: the setup every variant starts from"),
    patterns: Optional[str] = typer.Option(None, help="comma-separated: pattern names, `random` (a seeded random "
                                                      "ViT->LLM order) or pairs:VIT>LLM/VIT>LLM [default: all seven "
                                                      "of the paper's Table 3]"),
    hi_res: str = typer.Option("off,on", "--hi-res", help="off, on or off,on"),
    num_shortcuts: Optional[str] = typer.Option(None, help="shortcut counts of the sparse and random patterns, "
                                                           "e.g. 2,4,8 [default: the preset's]"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds [default: 0,1; --quick: 0]"),
    benchmark: str = typer.Option("shapes", "--benchmark", "-b", help="benchmark every variant is scored on"),
    data: Optional[Path] = typer.Option(None, help="the benchmark's data folder (not needed for shapes)"),
    limit: Optional[int] = typer.Option(None, help="score the first N questions only"),
    max_new_tokens: int = typer.Option(8, help="tokens generated per answer"),
    quick: bool = typer.Option(False, help=f"3 patterns ({QUICK_PATTERNS}) and 1 seed"),
    cpu: bool = typer.Option(False, help="train on CPU even if a GPU is present"),
) -> None:
    """Train both stages of every variant, evaluate each with true and ablated images, write sweep.json,
    sweep.md and sweep.png. Rerunning skips finished variants and resumes a stopped one."""
    from sparsecut_core.presets.preset import load_preset
    from sparsecut_core.sweep.plan import feature_groups, parse_patterns, plan_for_preset
    from sparsecut_core.sweep.runner import SweepSpec, load_sweep, run_sweep
    from sparsecut_core.training.loop import TrainingInterrupted

    spec = SweepSpec(
        preset=preset,
        patterns=tuple(parse_patterns(patterns or (QUICK_PATTERNS if quick else ALL_PATTERNS))),
        hi_res=_on_off(hi_res),
        num_shortcuts=_ints(num_shortcuts, "--num-shortcuts") if num_shortcuts else (None,),
        seeds=_ints(seeds, "--seeds") if seeds else ((0,) if quick else (0, 1)),
        benchmark=benchmark, data=str(data) if data is not None else None, limit=limit,
        max_new_tokens=max_new_tokens,
    )
    loaded = load_preset(preset)
    variants = plan_for_preset(loaded, spec.patterns, spec.hi_res, spec.num_shortcuts, spec.seeds)
    groups = feature_groups(variants)
    console.print(f"sweep of [bold]{loaded.name}[/]: {len(variants)} variants into {out}; the frozen tower's "
                  f"features computed once for {sum(len(g.variants) for g in groups)} variants in {len(groups)} "
                  f"view group{'s' if len(groups) > 1 else ''}", highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
    started = time.perf_counter()
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            report = run_sweep(loaded, spec, out, cpu=cpu, cache_dir=conversion_cache_dir(), progress=_Progress(bar))
    except TrainingInterrupted as stop:
        err_console.print(f"[yellow]{stop}; rerun the same command to go on[/]")
        raise typer.Exit(130)
    summary = load_sweep(out)
    _write_plot(out, summary)
    _print_table((out / "sweep.md").read_text())
    features = summary["features"]
    console.print(f"{len(report.ran)} variants ran in {time.perf_counter() - started:.0f} s, "
                  f"{len(report.results) - len(report.ran)} were done before; tower passes "
                  f"{features['tower_s']:.0f} s, sharing them saved about {features['saved_s']:.0f} s. "
                  f"Wrote {out / 'sweep.json'}, {out / 'sweep.md'}", highlight=False)
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} variants failed[/] (listed in {out / 'sweep.md'}); "
                          "rerun to try them again")
        raise typer.Exit(1)


@sweep_app.command("show")
def show(
    folder: Path = typer.Argument(..., help="a sweep folder (holds sweep.json)"),
    plot: bool = typer.Option(False, help="also redraw sweep.png"),
) -> None:
    """Print a sweep's table again (from its sweep.json)."""
    from sparsecut_core.sweep.report import sweep_markdown
    from sparsecut_core.sweep.runner import load_sweep

    data = load_sweep(folder)
    _print_table(sweep_markdown(data))
    if plot and (path := _write_plot(folder, data)) is not None:
        console.print(f"wrote {path}")
