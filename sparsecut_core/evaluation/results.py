"""`results.json`: a model's scores per benchmark beside its id, shortcut pattern, config hash, weights id and date.

Each benchmark's entry also records the generation settings it was scored with.

Written atomically, one benchmark merged at a time; `compare_results` lines up several
runs' scores and `plot_comparison` draws their headline scores."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from ..model.fingerprint import tensors_id, weights_id
from .ablation import base_benchmark
from .benchmarks import BENCHMARKS


RESULTS_FILE = "results.json"


COUNT_KEYS = ("n", "answered", "missing", "skipped")  # bookkeeping, not scores


RUN_KEYS = ("model_id", "pattern", "config_hash", "weights_id", "date")  # results.json entries that are not benchmarks


@dataclass(frozen=True)
class RunInfo:
    """What results.json says about the model: its name, shortcut pattern, a hash of its config and its weights id."""

    model_id: str
    pattern: Any = None
    config_hash: str | None = None
    weights_id: str | None = None  # model/fingerprint.py: the weights that wrote the answers


def config_hash(config: dict) -> str:
    """12 hex digits of the config as saved (config.json), without the fields that vary between saves."""
    stable = {k: v for k, v in config.items() if k not in ("transformers_version", "_name_or_path")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def _weights(model_dir: Path | None, model: Any) -> str | None:
    """The weights id of the model folder (or a training run's model/), else of the model in memory."""
    if model_dir is not None:
        for folder in (Path(model_dir), Path(model_dir) / "model"):
            if (folder / "config.json").is_file() and (found := weights_id(folder)) is not None:
                return found
    return tensors_id(model) if model is not None else None


def run_info(model_dir: Path | None = None, model: Any = None) -> RunInfo:
    """From a saved model folder's config.json and weights id (no weights loaded), else from a model in memory.

    `model`, when given with `model_dir`, must be the model loaded from that folder.
    """
    weights = _weights(model_dir, model)
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        with open(Path(model_dir) / "config.json", encoding="utf-8") as file:
            config = json.load(file)
        return RunInfo(Path(model_dir).name, config.get("pattern"), config_hash(config), weights)
    if model is not None:
        config = json.loads(model.config.to_json_string(use_diff=True))  # what save_pretrained writes
        name = Path(model_dir).name if model_dir is not None else Path(model.name_or_path or "model").name
        return RunInfo(name, config.get("pattern"), config_hash(config), weights)
    return RunInfo(Path(model_dir).name if model_dir is not None else "unknown", weights_id=weights)


def load_results(path: Path) -> dict:
    with open(path, encoding="utf-8") as file:
        try:
            results = json.load(file)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object of benchmark results")
    return results


def check_same_model(path: Path, info: RunInfo) -> None:
    """An output folder belongs to one model: results.json of another config hash or weights id is an error."""
    old = load_results(path) if path.exists() else {}
    for field, what in (("config_hash", "config hash"), ("weights_id", "weights id")):
        mine = getattr(info, field)
        if old.get(field) and mine and old[field] != mine:
            raise ValueError(f"{path} holds results of another model ({what} {old[field]}, this one {mine}); "
                             f"give another --out, or delete {path.parent} to start fresh")


def write_results(path: Path, benchmark: str, scores: dict[str, float], info: RunInfo,
                  generation: dict | None = None) -> Path:
    """Merge one benchmark's scores (and the generation settings they were scored with) into results.json."""
    check_same_model(path, info)
    old = load_results(path) if path.exists() else {}
    run = {
        "model_id": info.model_id,
        "pattern": info.pattern if info.pattern is not None else old.get("pattern"),
        "config_hash": info.config_hash or old.get("config_hash"),
        "weights_id": info.weights_id or old.get("weights_id"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    benchmarks = {k: v for k, v in old.items() if k not in RUN_KEYS}
    benchmarks[benchmark] = {**scores, **({"generation": generation} if generation is not None else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {**run, **benchmarks})


def find_results(run: Path) -> Path:
    """A run's results.json: the file itself, inside the folder, or in the model folder's eval/."""
    run = Path(run)
    for candidate in (run, run / RESULTS_FILE, run / "eval" / RESULTS_FILE):
        if candidate.is_file():
            return candidate
    raise ValueError(f"{run}: no {RESULTS_FILE} here or in {run / 'eval'}")


def _run_name(results_path: Path) -> str:
    folder = results_path.parent
    return folder.parent.name if folder.name == "eval" else folder.name


def headline(benchmark: str, scores: dict[str, float]) -> str | None:
    """The metric the paper reports for a benchmark (else its first score)."""
    base = base_benchmark(benchmark)  # an ablated run (`shapes@deranged`) has its benchmark's headline
    known = BENCHMARKS[base].headline if base in BENCHMARKS else None
    if known in scores:
        return known
    return next((k for k, v in scores.items() if k not in COUNT_KEYS and isinstance(v, (int, float))), None)


@dataclass(frozen=True)
class Comparison:
    runs: list[str]
    rows: list[tuple[str, str, list[float | None]]]  # (benchmark, metric, a value per run)


def compare_results(runs: list[Path]) -> Comparison:
    """Every score of every run side by side; a run without a benchmark or metric has None there."""
    if not runs:
        raise ValueError("compare: give at least one run")
    paths = [find_results(run) for run in runs]
    names = [_run_name(path) for path in paths]
    names = [f"{name} ({k + 1})" if names.count(name) > 1 else name for k, name in enumerate(names)]
    loaded = [{k: v for k, v in load_results(p).items() if k not in RUN_KEYS and isinstance(v, dict)} for p in paths]
    keys: dict[tuple[str, str], None] = {}  # ordered set: benchmarks and metrics in order of first appearance
    for results in loaded:
        for benchmark, scores in results.items():
            for metric, value in scores.items():
                if metric not in COUNT_KEYS and isinstance(value, (int, float)):
                    keys[(benchmark, metric)] = None
    rows = [(b, m, [results.get(b, {}).get(m) for results in loaded]) for b, m in keys]
    return Comparison(names, rows)


def headline_rows(comparison: Comparison) -> list[tuple[str, str, list[float | None]]]:
    """One row per benchmark: its headline metric."""
    by_benchmark: dict[str, dict[str, list[float | None]]] = defaultdict(dict)
    for benchmark, metric, values in comparison.rows:
        by_benchmark[benchmark][metric] = values
    chosen = []
    for benchmark, metrics in by_benchmark.items():
        metric = headline(benchmark, {m: 0.0 for m in metrics})
        if metric is not None:
            chosen.append((benchmark, metric, metrics[metric]))
    return chosen


def _fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot_comparison(comparison: Comparison, path: Path) -> Path:
    """A grouped bar chart (PNG) of each benchmark's headline score, one bar per run."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ValueError("--plot needs matplotlib: pip install 'sparsecut[plot]'") from err
    rows = headline_rows(comparison)
    if not rows:
        raise ValueError("compare: no scores to plot")
    figure = Figure(figsize=(max(4.0, 1.2 * len(rows) * max(1, len(comparison.runs)) ** 0.5 + 2), 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(comparison.runs)
    for k, run in enumerate(comparison.runs):
        xs = [i + (k - (len(comparison.runs) - 1) / 2) * width for i in range(len(rows))]
        bars = axes.bar(xs, [values[k] or 0.0 for _, _, values in rows], width, label=run)
        axes.bar_label(bars, labels=[_fmt_score(values[k]) for _, _, values in rows], fontsize="x-small")
    axes.set_xticks(range(len(rows)), [f"{b}\n{m}" for b, m, _ in rows])
    axes.set_ylim(0, 100)  # every headline score is a percentage
    axes.set_ylabel("score (%)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
