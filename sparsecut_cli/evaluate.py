"""`sparsecut eval`: run a benchmark on a saved model, or compare the results of several runs.

`sparsecut eval MODEL_DIR --benchmark NAME ...` runs the default command (`run`);
`sparsecut eval compare RUN_A RUN_B ...` compares. Typer has no default subcommand,
so the group inserts `run` when the first argument names no subcommand.
"""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from sparsecut_cli.output import console, err_console


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it is no subcommand (and not --help), goes to `default_command`."""

    default_command = "run"

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Evaluate a model on a benchmark (`sparsecut eval MODEL_DIR --benchmark NAME`), or compare runs "
         "(`sparsecut eval compare RUN_A RUN_B`).",
)


class OnBadSample(str, Enum):
    error = "error"
    skip = "skip"


def _benchmark_names() -> str:
    from sparsecut_core.evaluation.benchmarks import BENCHMARKS

    return ", ".join(BENCHMARKS)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def _show_report(report) -> None:
    table = Table(title=f"{report.benchmark} ({report.answers_path.parent})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in report.metrics.items():
        table.add_row(metric, _fmt(value))
    console.print(table)
    if report.ablations:
        _show_ablation(report)
    console.print(f"answers: {_answer_counts(report)} -> {report.answers_path}", highlight=False)
    if report.metrics.get("missing"):
        err_console.print(f"[yellow]warning:[/] {report.metrics['missing']} questions have no answer in "
                          f"{report.answers_path}; the scores cover the answered ones", highlight=False)
    for why in report.skipped[:5]:
        err_console.print(f"[yellow]skipped:[/] {why}", highlight=False, soft_wrap=True)
    if len(report.skipped) > 5:
        err_console.print(f"[yellow]skipped:[/] ... {len(report.skipped) - 5} more", highlight=False)
    if report.submission_path is not None:
        console.print(f"server submission file: {report.submission_path}", highlight=False)
    console.print(f"results: {report.results_path}", highlight=False)


def _answer_counts(report) -> str:
    """"N new, M reused, K recomputed because ...": stale answers of other settings or inputs are asked again."""
    stale = sum(report.recomputed.values())
    counts = f"{report.generated - stale} new, {report.reused} reused"
    if len(report.recomputed) == 1:
        counts += f", {stale} recomputed because {next(iter(report.recomputed))}"
    elif report.recomputed:
        counts += f", {stale} recomputed (" + ", ".join(f"{n} because {why}" for why, n in
                                                       report.recomputed.items()) + ")"
    return counts


def _show_ablation(report) -> None:
    """The headline score with the true images beside the deranged and blank ones: a model that looks loses."""
    from sparsecut_core.evaluation.results import headline

    metric = headline(report.benchmark, report.metrics)
    if metric is None:
        return
    table = Table(title=f"image ablation ({metric})", show_header=True)
    for column in ("images", "score", "vs true"):
        table.add_column(column, justify="left" if column == "images" else "right")
    true = report.metrics[metric]
    table.add_row("true", _fmt(true), "")
    for condition, scores in report.ablations.items():
        value = scores.get(metric)
        table.add_row(condition, _fmt(value) if value is not None else "-",
                      f"{value - true:+.1f}" if value is not None else "")
    console.print(table)


@eval_app.command("run")
def run(
    model_dir: Path = typer.Argument(..., help="saved model folder (its config.json is enough with --score-only)"),
    benchmark: str = typer.Option(..., "--benchmark", "-b", help="vqav2, gqa, vizwiz, scienceqa, textvqa, pope, "
                                  "mmbench, mmbench_cn, seed or shapes (built in, needs no --data)"),
    data: Optional[Path] = typer.Option(None, help="the benchmark's folder in LLaVA's eval layout, or a Hugging "
                                        "Face dataset saved to disk / its parquet files"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: MODEL_DIR/eval)"),
    split: Optional[str] = typer.Option(None, help="split of a Hugging Face dataset with several"),
    batch_size: int = typer.Option(8, min=1),
    max_new_tokens: int = typer.Option(128, min=1),
    limit: Optional[int] = typer.Option(None, min=1, help="only the first N questions (a quick look)"),
    score_only: bool = typer.Option(False, "--score-only", help="score the existing answers file, load no model"),
    answers: Optional[Path] = typer.Option(None, help="answers file to score with --score-only "
                                           "(default: OUT/BENCHMARK/answers.jsonl), in LLaVA's format"),
    on_bad_sample: OnBadSample = typer.Option(OnBadSample.error, help="error: stop at a missing image or bad "
                                              "line; skip: leave it out and count it"),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="LLM in 4-bit NF4 (bitsandbytes)"),
    load_8bit: bool = typer.Option(False, "--load-8bit", help="LLM in 8-bit (bitsandbytes LLM.int8())"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    image_ablation: bool = typer.Option(False, "--image-ablation", help="also answer every question with another "
                                        "question's image and with a blank one, and score both beside the true "
                                        "images (does the model look?)"),
) -> None:
    """Answer a benchmark's questions with MODEL_DIR (resuming an earlier run) and score them."""
    from sparsecut_core.evaluation.benchmarks import get_benchmark
    from sparsecut_core.evaluation.runner import EvalSettings, evaluate, score_only as score_answers

    get_benchmark(benchmark)  # an unknown name fails before anything loads
    if data is not None:
        import datasets

        datasets.disable_progress_bars()  # the CLI shows its own progress
    out = out if out is not None else model_dir / "eval"
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit,
                            on_bad_sample=on_bad_sample.value, split=split, image_ablation=image_ablation)
    if score_only and image_ablation:
        raise ValueError("--image-ablation asks the model again; it does not go with --score-only")
    if score_only:
        report = score_answers(benchmark, out_dir=out, data=data, answers_path=answers, model_dir=model_dir,
                               settings=settings)
        _show_report(report)
        return
    if answers is not None:
        raise ValueError("--answers is for --score-only; a run writes OUT/BENCHMARK/answers.jsonl")
    if load_4bit and load_8bit:
        raise ValueError("choose one of --load-4bit and --load-8bit")
    from sparsecut_core.inference.loading import load_pretrained

    quantize = "4bit" if load_4bit else "8bit" if load_8bit else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        model, processor = load_pretrained(model_dir, device=device, quantize=quantize)
        columns = (TextColumn(f"{benchmark}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as bar:
            task = bar.add_task(benchmark, total=None)
            report = evaluate(model, processor, benchmark, out_dir=out, data=data, model_dir=model_dir,
                              settings=settings, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total))
    _show_report(report)


@eval_app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="results.json files, eval folders or model folders (MODEL/eval)"),
    plot: Optional[Path] = typer.Option(None, help="also write a bar chart of the headline scores (PNG)"),
) -> None:
    """Scores of several runs side by side; --plot draws the headline score of each benchmark."""
    from sparsecut_core.evaluation.results import compare_results, plot_comparison

    comparison = compare_results(runs)
    table = Table("benchmark", "metric", *comparison.runs)
    for benchmark, metric, values in comparison.rows:
        table.add_row(benchmark, metric, *(_fmt(v) for v in values))
    console.print(table)
    if plot is not None:
        console.print(f"wrote {plot_comparison(comparison, plot)}", highlight=False)
