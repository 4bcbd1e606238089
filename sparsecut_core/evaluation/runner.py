"""Running a benchmark: the questions not answered yet are answered (answers.py), then all are scored
like the official scripts and merged into `<out>/results.json` (results.py).

`score_only` scores an existing answers file, including one written by LLaVA's own
`model_vqa*.py` scripts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from .ablation import ABLATIONS, ablated, ablated_benchmark
from .answers import ANSWERS_FILE, Progress, drop_torn_tail, first_model_id, generate_answers, match_answers, \
    read_answers
from .benchmarks import get_benchmark
from .benchmarks.base import Benchmark, Loaded, Sample
from .results import RESULTS_FILE, RunInfo, check_same_model, run_info, write_results


BAD_SAMPLE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 8
    max_new_tokens: int = 128  # LLaVA's model_vqa_loader.py default
    limit: int | None = None  # the first N questions only (all rotations of a circular question count as one)
    on_bad_sample: str = "error"  # or "skip": leave out (and count) unreadable records and missing images
    split: str | None = None  # for Hugging Face datasets with several splits
    image_ablation: bool = False  # also answer with deranged and with blank images (ablation.py)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected a positive int, got {self.max_new_tokens!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit: expected a positive int, got {self.limit!r}")
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample: expected one of {', '.join(BAD_SAMPLE_POLICIES)}, "
                             f"got {self.on_bad_sample!r}")


@dataclass
class EvalReport:
    benchmark: str
    metrics: dict[str, float]
    answers_path: Path
    results_path: Path
    generated: int = 0  # answers produced by this run
    reused: int = 0  # answers found in the answers file from an earlier run
    skipped: list[str] = field(default_factory=list)  # bad samples left out, one message each
    submission_path: Path | None = None  # the file for the benchmark's evaluation server
    ablations: dict[str, dict[str, float]] = field(default_factory=dict)  # condition -> scores (image_ablation)


def limit_questions(samples: list[Sample], limit: int | None) -> list[Sample]:
    """The samples of the first `limit` questions; a question's rotations (meta "group") stay together."""
    if limit is None:
        return samples
    kept, groups = [], set()
    for k, sample in enumerate(samples):
        group = sample.meta.get("group", ("sample", k))
        if group not in groups and len(groups) < limit:
            groups.add(group)
        if group in groups:
            kept.append(sample)
    return kept


def _check_bad(bad: list[str], policy: str) -> None:
    if bad and policy == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}; --on-bad-sample skip leaves such samples out")


def select_samples(loaded: Loaded, settings: EvalSettings, asking: bool) -> tuple[list[Sample], list[str]]:
    """The samples to run (or score) and the bad ones left out; with on_bad_sample="error" any bad one raises.

    A missing image only matters when `asking` the model (not when scoring saved answers).
    """
    bad = list(loaded.bad_records)
    samples = limit_questions(loaded.samples, settings.limit)
    if asking:
        bad += [s.problem for s in samples if s.problem]
        samples = [s for s in samples if not s.problem]
    _check_bad(bad, settings.on_bad_sample)
    return samples, bad


def evaluate(
    model: Any,
    processor: Any,
    benchmark: str,
    *,
    out_dir: Path,
    data: Path | None = None,
    model_dir: Path | None = None,
    settings: EvalSettings = EvalSettings(),
    progress: Progress | None = None,
) -> EvalReport:
    """Answer the benchmark's questions not yet in `<out_dir>/<benchmark>/answers.jsonl`, then score them all."""
    bench = get_benchmark(benchmark)
    samples, skipped = select_samples(bench.load(data, settings.split, settings.limit), settings, asking=True)
    answers_path = Path(out_dir) / bench.name / ANSWERS_FILE
    info = run_info(model_dir, model)
    check_same_model(Path(out_dir) / RESULTS_FILE, info)  # before reusing its answers or spending time on new ones
    generated, left_out, todo = _answer_missing(model, processor, samples, answers_path, info, bench.name, settings,
                                                progress)
    dropped = {id(s) for s, _ in left_out}
    samples = [s for s in samples if id(s) not in dropped]
    report = _score_and_record(bench, samples, answers_path, Path(out_dir), data, info, settings,
                               skipped + [why for _, why in left_out], loose=False)
    report.generated, report.reused = generated, len(samples) + len(left_out) - todo
    if settings.image_ablation:
        for condition in ABLATIONS:
            changed = ablated(samples, condition)  # every image was readable in the true-image pass
            path = answers_path.with_name(f"answers.{condition}.jsonl")
            name = ablated_benchmark(bench.name, condition)
            new, _, _ = _answer_missing(model, processor, changed, path, info, name, settings, progress)
            scores, _, _, _ = _scores(bench, changed, path, settings, loose=False)
            report.ablations[condition] = scores
            write_results(Path(out_dir) / RESULTS_FILE, name, scores, info)
            report.generated += new
    return report


def _answer_missing(
    model: Any,
    processor: Any,
    samples: list[Sample],
    answers_path: Path,
    info: RunInfo,
    benchmark: str,
    settings: EvalSettings,
    progress: Progress | None,
) -> tuple[int, list[tuple[Sample, str]], int]:
    """Answer the samples not yet in `answers_path`: (answers written, samples left out with why, questions asked)."""
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    earlier: list[dict] = []
    if answers_path.exists():
        drop_torn_tail(answers_path)
        earlier, bad = read_answers(answers_path)
        _check_bad(bad, settings.on_bad_sample)
    todo = [s for s, text in zip(samples, match_answers(samples, earlier)) if text is None]
    generated, left_out = generate_answers(model, processor, todo, answers_path, model_id=info.model_id,
                                           benchmark=benchmark, batch_size=settings.batch_size,
                                           max_new_tokens=settings.max_new_tokens,
                                           on_bad_sample=settings.on_bad_sample, progress=progress)
    return generated, left_out, len(todo)


def score_only(
    benchmark: str,
    *,
    out_dir: Path,
    data: Path | None = None,
    answers_path: Path | None = None,
    model_dir: Path | None = None,
    settings: EvalSettings = EvalSettings(),
) -> EvalReport:
    """Score an existing answers file (ours or LLaVA's) without loading a model."""
    bench = get_benchmark(benchmark)
    answers_path = Path(answers_path) if answers_path is not None else Path(out_dir) / bench.name / ANSWERS_FILE
    if not answers_path.is_file():
        raise ValueError(f"no answers to score: {answers_path} does not exist")
    samples, skipped = select_samples(bench.load(data, settings.split, settings.limit), settings, asking=False)
    info = run_info(model_dir)
    if info.config_hash is None:  # no model folder: name the run after the model that wrote the answers
        info = RunInfo(first_model_id(answers_path) or info.model_id)
    return _score_and_record(bench, samples, answers_path, Path(out_dir), data, info, settings, skipped, loose=True)


def _scores(
    bench: Benchmark, samples: list[Sample], answers_path: Path, settings: EvalSettings, loose: bool
) -> tuple[dict[str, float], list[str | None], int, list[str]]:
    """The benchmark's scores of the answered samples: (scores, each sample's answer, answered, bad lines)."""
    answers, bad = read_answers(answers_path)
    _check_bad(bad, settings.on_bad_sample)
    found = match_answers(samples, answers, loose)
    scored = [(s, text) for s, text in zip(samples, found) if text is not None]
    scores = bench.score([s for s, _ in scored], [text for _, text in scored]) if scored else {}
    return scores, found, len(scored), bad


def _score_and_record(
    bench: Benchmark,
    samples: list[Sample],
    answers_path: Path,
    out_dir: Path,
    data: Path | None,
    info: RunInfo,
    settings: EvalSettings,
    skipped: list[str],
    loose: bool,
) -> EvalReport:
    scores, found, scored, bad = _scores(bench, samples, answers_path, settings, loose)
    skipped = skipped + bad
    missing = len(samples) - scored
    scores = {**scores, **({"missing": missing} if missing else {}), **({"skipped": len(skipped)} if skipped else {})}
    results_path = write_results(out_dir / RESULTS_FILE, bench.name, scores, info)
    report = EvalReport(bench.name, scores, answers_path, results_path, reused=scored, skipped=skipped)
    if any(s.target is None for s in samples):  # no local ground truth (a test split): its server scores it
        upload = bench.submission(samples, [text or "" for text in found], Path(data) if data is not None else None)
        if upload is not None:
            name, payload = upload
            report.submission_path = write_json_atomic(answers_path.parent / name, payload)
    return report
