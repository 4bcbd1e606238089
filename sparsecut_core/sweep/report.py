"""A sweep's results read back: each stage's loss curve in brief, the table (sweep.md) and the figure
(sweep.png) drawn from sweep.json alone, so that `sparsecut sweep show` needs nothing else."""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .table import VariantScores, grounding_note, markdown_table, summarise

CURVE_POINTS = 50


def loss_summary(metrics: Path) -> dict[str, Any]:
    """A stage's metrics.jsonl in brief: steps, first/last/lowest loss (last: the mean of the final tenth of the
    steps), training seconds of its last run, and the curve as at most CURVE_POINTS bucket means."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    if not losses:
        raise ValueError(f"{metrics}: no finite loss logged")
    values = [loss for _, loss in losses]
    tail = values[-max(1, len(values) // 10):]
    size = math.ceil(len(losses) / CURVE_POINTS)
    curve = [[chunk[-1][0], round(statistics.fmean(v for _, v in chunk), 4)]
             for chunk in (losses[k:k + size] for k in range(0, len(losses), size))]
    return {"steps": losses[-1][0], "first": round(values[0], 4), "last": round(statistics.fmean(tail), 4),
            "min": round(min(values), 4), "train_s": round(rows[-1].get("elapsed_s", 0.0), 1), "curve": curve}


def variant_scores(data: dict[str, Any]) -> list[VariantScores]:
    """The finished variants of a sweep.json, as the table reads them."""
    return [
        VariantScores(pattern=v["settings"]["pattern"], hi_res=v["settings"]["hi_res"],
                      num_shortcuts=v["settings"]["num_shortcuts"], seed=v["settings"]["seed"],
                      true=v["scores"]["true"], deranged=v["scores"]["deranged"])
        for v in data["variants"] if v["status"] == "done"
    ]


def sweep_markdown(data: dict[str, Any]) -> str:
    """sweep.md: what ran, the table, what sharing the tower's features saved, and what failed."""
    spec = data["spec"]
    scores = variant_scores(data)
    lines = [
        f"# Sweep of {spec['preset']} on {spec['benchmark']}",
        "",
        f"{len(scores)} of {len(data['variants'])} variants finished; seeds {', '.join(map(str, spec['seeds']))}. "
        "Accuracy (%) with the true images and with deranged ones (each question asked with another "
        "question's image); mean ± std over seeds. A difference inside the seeds' spread is no ordering.",
        "",
    ]
    if scores:
        rows = summarise(scores)
        lines.append(markdown_table(rows))
        if (note := grounding_note(rows)) is not None:
            lines += [note, ""]
    features = data.get("features", {})
    if features.get("tower_s"):
        lines.append(f"Frozen-tower features: {features['tower_s']:.1f} s of tower passes; sharing them between "
                     f"variants saved about {features['saved_s']:.1f} s.")
        lines.append("")
    failed = [v for v in data["variants"] if v["status"] == "failed"]
    if failed:
        lines.append("Failed (a rerun tries them again):")
        lines.extend(f"- {v['name']}: {v['error']}" for v in failed)
        lines.append("")
    return "\n".join(lines)


def plot_sweep(data: dict[str, Any], path: Path) -> Path:
    """sweep.png: accuracy per setting (each seed a dot, true and deranged images) beside the finetuning
    loss curves."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ValueError("sweep.png needs matplotlib: pip install 'sparsecut[plot]'") from err
    rows = summarise(variant_scores(data))
    if not rows:
        raise ValueError("no finished variant to plot")
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    scores_axes, loss_axes = figure.subplots(1, 2, width_ratios=[3, 2])
    labels = []
    for x, row in enumerate(rows):
        members = [v for v in data["variants"] if v["status"] == "done" and _setting(v) == _row_setting(row)]
        true = [v["scores"]["true"]["accuracy"] for v in members]
        deranged = [v["scores"]["deranged"]["accuracy"] for v in members]
        scores_axes.bar(x, row.true.mean, 0.6, color="tab:blue", alpha=0.5)
        scores_axes.scatter([x] * len(true), true, color="tab:blue", s=14, zorder=3)
        scores_axes.scatter([x] * len(deranged), deranged, color="tab:red", marker="x", s=18, zorder=3)
        labels.append(f"{row.pattern}{'' if row.num_shortcuts is None else f' n{row.num_shortcuts}'}\n"
                      f"hi-res {'on' if row.hi_res else 'off'}")
    scores_axes.set_xticks(range(len(rows)), labels, fontsize="x-small", rotation=60, ha="right")
    scores_axes.set_ylabel("accuracy (%): bars = mean, dots = seeds, x = deranged images")
    scores_axes.set_ylim(0, 100)
    for variant in data["variants"]:
        curve = variant.get("stages", {}).get("finetune", {}).get("curve")
        if curve:
            loss_axes.plot([s for s, _ in curve], [v for _, v in curve], linewidth=0.8, label=variant["name"])
    loss_axes.set_xlabel("finetuning step")
    loss_axes.set_ylabel("loss")
    if len(data["variants"]) <= 12:
        loss_axes.legend(fontsize="xx-small")
    figure.tight_layout()
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            figure.savefig(file, format="png", dpi=110)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _setting(variant: dict[str, Any]) -> tuple:
    s = variant["settings"]
    return s["pattern"], s["hi_res"], s["num_shortcuts"]


def _row_setting(row) -> tuple:
    return row.pattern, row.hi_res, row.num_shortcuts
