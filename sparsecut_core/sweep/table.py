"""A sweep's results as the paper's Table 3/4: one row per setting, mean +- std over seeds.

Each variant contributes its overall and per-kind accuracy with the true images and
its overall accuracy with deranged images (the image ablation), so that a row shows
both what the setting scores and how much of it comes from the picture. A
difference to `llava` inside the seeds' spread is no ordering: the table prints the
spread beside every mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BASELINE = "llava"


@dataclass(frozen=True)
class VariantScores:
    """One finished variant: its settings and the scores of its results.json."""

    pattern: str
    hi_res: bool
    num_shortcuts: int | None
    seed: int
    true: dict[str, float]  # "accuracy" and "accuracy/KIND"
    deranged: dict[str, float]


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float | None  # None with a single seed

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)

    def __str__(self) -> str:
        return f"{self.mean:.1f}" if self.std is None else f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass(frozen=True)
class Row:
    pattern: str
    hi_res: bool
    num_shortcuts: int | None
    seeds: int
    true: Spread
    deranged: Spread
    kinds: dict[str, Spread]
    vs_baseline: float | None  # mean overall minus llava's at the same hi-res; None without a llava row
    questions: int | None = None  # questions each variant was scored on

    @property
    def noise(self) -> float | None:
        """Two binomial standard errors (points) of an accuracy at the deranged score over these questions."""
        if not self.questions:
            return None
        p = min(max(self.deranged.mean / 100, 0.0), 1.0)
        return 200 * math.sqrt(p * (1 - p) / self.questions)

    @property
    def reads_image(self) -> bool | None:
        """Whether the true images beat the deranged ones by more than the noise (None: question count unknown)."""
        noise = self.noise
        return None if noise is None else self.true.mean - self.deranged.mean > noise


def _kinds(scores: Sequence[VariantScores]) -> list[str]:
    return sorted({k.split("/", 1)[1] for s in scores for k in s.true if k.startswith("accuracy/")})


def summarise(scores: Sequence[VariantScores]) -> list[Row]:
    """Rows in the order their settings first appear, seeds pooled."""
    groups: dict[tuple, list[VariantScores]] = {}
    for s in scores:
        groups.setdefault((s.pattern, s.hi_res, s.num_shortcuts), []).append(s)
    kinds = _kinds(scores)
    baseline = {
        hi_res: statistics.fmean(s.true["accuracy"] for s in members)
        for (pattern, hi_res, _), members in groups.items()
        if pattern == BASELINE
    }
    rows = []
    for (pattern, hi_res, n), members in groups.items():
        true = Spread.of([s.true["accuracy"] for s in members])
        rows.append(Row(
            pattern=pattern, hi_res=hi_res, num_shortcuts=n, seeds=len(members), true=true,
            deranged=Spread.of([s.deranged["accuracy"] for s in members]),
            kinds={k: Spread.of([s.true[f"accuracy/{k}"] for s in members if f"accuracy/{k}" in s.true])
                   for k in kinds if any(f"accuracy/{k}" in s.true for s in members)},
            vs_baseline=true.mean - baseline[hi_res] if hi_res in baseline else None,
            questions=min((int(s.true["n"]) for s in members if "n" in s.true), default=None),
        ))
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table: settings, true and deranged accuracy, the gap, the difference to llava,
    then each kind's true-image accuracy."""
    kinds = sorted({k for row in rows for k in row.kinds})
    head = ["pattern", "n", "hi-res", "seeds", "true", "deranged", "true - deranged", f"vs {BASELINE}", *kinds]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for row in rows:
        cells = [
            row.pattern, "" if row.num_shortcuts is None else str(row.num_shortcuts), "on" if row.hi_res else "off",
            str(row.seeds), str(row.true), str(row.deranged), f"{row.true.mean - row.deranged.mean:+.1f}",
            "" if row.vs_baseline is None else f"{row.vs_baseline:+.1f}",
            *(str(row.kinds[k]) if k in row.kinds else "" for k in kinds),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def grounding_note(rows: Sequence[Row]) -> str | None:
    """One sentence on the settings whose true images do not beat the deranged ones beyond the noise: they
    answer from the question alone, so their differences are no ordering of the shortcut patterns."""
    judged = [r for r in rows if r.reads_image is not None]
    blind = [r for r in judged if not r.reads_image]
    if not blind:
        return None
    noise = max(r.noise for r in blind)
    margin = f"by more than two standard errors (up to {noise:.1f} points here)"
    if len(blind) == len(judged):
        return (f"No setting beats its deranged images {margin}: every one answers from the question alone, "
                "and their differences say nothing about the shortcuts.")
    one = len(blind) == 1
    return (f"{len(blind)} of {len(judged)} settings ({', '.join(_label(r) for r in blind)}) "
            f"{'does' if one else 'do'} not beat {'its' if one else 'their'} deranged images {margin}: "
            f"{'it answers' if one else 'they answer'} from the question alone, and "
            f"{'its difference to the others says' if one else 'their differences to the others say'} nothing "
            "about the shortcuts.")


def _label(row: Row) -> str:
    n = "" if row.num_shortcuts is None else f" n={row.num_shortcuts}"
    return f"{row.pattern}{n} hi-res {'on' if row.hi_res else 'off'}"
