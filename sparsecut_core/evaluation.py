"""Running a benchmark: batched greedy answers saved as they come, then scored like the official scripts.

Answers go to `<out>/<benchmark>/answers.jsonl` in LLaVA's answer-file format
(question_id, prompt, text, answer_id, model_id, metadata), a batch at a time and
flushed, so a killed run keeps what it answered and a rerun asks only the rest.
Scores merge into `<out>/results.json`: {benchmark: {metric: value}} beside the
model's id, shortcut pattern, config hash and the date, written atomically.
`score_only` scores an existing answers file, including one written by LLaVA's
own `model_vqa*.py` scripts.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .benchmarks import BENCHMARKS, Benchmark, ImageRef, Loaded, Sample, get_benchmark, read_jsonl
from .images import load_image
from .files import write_json_atomic
from .templates import Turn, render_prompt

ANSWERS_FILE = "answers.jsonl"
RESULTS_FILE = "results.json"
BAD_SAMPLE_POLICIES = ("error", "skip")
COUNT_KEYS = ("n", "answered", "missing", "skipped")  # bookkeeping, not scores
RUN_KEYS = ("model_id", "pattern", "config_hash", "date")  # results.json entries that are not benchmarks

Progress = Callable[[int, int], None]  # (answered so far, to answer in this run)


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 8
    max_new_tokens: int = 128  # LLaVA's model_vqa_loader.py default
    limit: int | None = None  # the first N questions only (all rotations of a circular question count as one)
    on_bad_sample: str = "error"  # or "skip": leave out (and count) unreadable records and missing images
    split: str | None = None  # for Hugging Face datasets with several splits

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


@dataclass(frozen=True)
class RunInfo:
    """What results.json says about the model: its name, shortcut pattern and a hash of its config."""

    model_id: str
    pattern: Any = None
    config_hash: str | None = None


def config_hash(config: dict) -> str:
    """12 hex digits of the config as saved (config.json), without the fields that vary between saves."""
    stable = {k: v for k, v in config.items() if k not in ("transformers_version", "_name_or_path")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:12]


def run_info(model_dir: Path | None = None, model: Any = None) -> RunInfo:
    """From a saved model folder's config.json (no weights loaded), else from a model in memory."""
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        with open(Path(model_dir) / "config.json", encoding="utf-8") as file:
            config = json.load(file)
        return RunInfo(Path(model_dir).name, config.get("pattern"), config_hash(config))
    if model is not None:
        config = json.loads(model.config.to_json_string(use_diff=True))  # what save_pretrained writes
        name = Path(model_dir).name if model_dir is not None else Path(model.name_or_path or "model").name
        return RunInfo(name, config.get("pattern"), config_hash(config))
    return RunInfo(Path(model_dir).name if model_dir is not None else "unknown")


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


# --------------------------------------------------------------------------------------------
# samples and answers
# --------------------------------------------------------------------------------------------


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


def read_answers(path: Path) -> tuple[list[dict], list[str]]:
    """The records of an answers file (LLaVA's format) and one message per unreadable line."""
    rows, bad = read_jsonl(path, ("question_id", "text"))
    records = []
    for number, row in rows:
        if isinstance(row["text"], str):
            records.append(row)
        else:
            bad.append(f"{path}: line {number}: field 'text' is not a string")
    return records, bad


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline: the write a killed run was in the middle of."""
    with open(path, "rb+") as file:
        size = file.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            chunk = file.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                file.truncate(start + newline + 1)
                return
            end = start
        file.truncate(0)


def match_answers(samples: list[Sample], answers: list[dict], loose: bool = False) -> list[str | None]:
    """Each sample's answer text (None if unanswered), matched on (question_id, prompt) as LLaVA's scorers do.

    `loose` also matches on question_id alone where both the samples and the answers hold it
    once: for answer files whose prompts were written differently (another toolkit).
    """
    by_key, by_id = {}, defaultdict(list)
    for record in answers:
        qid = str(record["question_id"])
        by_key[(qid, record.get("prompt"))] = record["text"]  # a later answer to the same question wins
        by_id[qid].append(record["text"])
    ids = Counter(str(s.question_id) for s in samples)
    found = []
    for sample in samples:
        qid = str(sample.question_id)
        text = by_key.get((qid, sample.prompt))
        if text is None and loose and ids[qid] == 1 and len(by_id[qid]) == 1:
            text = by_id[qid][0]
        found.append(text)
    return found


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def open_image(ref: ImageRef, sample: Sample):
    """The sample's image as RGB, read as LLaVA's eval scripts do (no EXIF rotation); unreadable: ValueError."""
    try:
        return load_image(ref() if callable(ref) else ref, exif_orientation=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"question {sample.question_id}: cannot read its image ({err})") from err


def ensure_pad_token(tokenizer: Any) -> None:
    """Batches are padded: a tokenizer without a pad token pads with unk (as LLaVA) or eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


@torch.inference_mode()
def answer_batch(model: Any, processor: Any, samples: list[Sample], images: list, max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of questions, left-padded so every prompt ends where generation starts.

    `images[k]` is sample k's image or None (a text-only question gets no placeholder).
    """
    tokenizer = processor.tokenizer
    prompts = []
    for sample, image in zip(samples, images):
        human = sample.text if image is None else f"{processor.image_token}\n{sample.text}"
        prompts.append(render_prompt(processor.template, [Turn("human", human)], tokenizer=tokenizer,
                                     eos=tokenizer.eos_token or "</s>"))
    pictures = [image for image in images if image is not None]
    batch = processor(prompts, pictures or None, padding_side="left").to(model.device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    output = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[model.config.image_token_id],  # never emit a visual position
    )
    new_tokens = output[:, batch["input_ids"].shape[1]:]  # [B, generated]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_record(sample: Sample, text: str, model_id: str, benchmark: str) -> dict:
    """One line of LLaVA's answer file."""
    return {
        "question_id": sample.question_id,
        "prompt": sample.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {"benchmark": benchmark, **sample.meta},
    }


def generate_answers(
    model: Any,
    processor: Any,
    samples: list[Sample],
    answers_path: Path,
    *,
    model_id: str,
    benchmark: str,
    settings: EvalSettings,
    progress: Progress | None = None,
) -> tuple[int, list[tuple[Sample, str]]]:
    """Answer `samples` in batches, appending each batch to `answers_path` and flushing it.

    Returns (answers written, [(sample, why)] left out because their image could not be read,
    with on_bad_sample="skip"; with "error" that raises).
    """
    ensure_pad_token(processor.tokenizer)
    written, left_out = 0, []
    if progress is not None:
        progress(0, len(samples))
    with open(answers_path, "a", encoding="utf-8") as file:
        for start in range(0, len(samples), settings.batch_size):
            kept, images = [], []
            for sample in samples[start:start + settings.batch_size]:
                try:
                    images.append(None if sample.image is None else open_image(sample.image, sample))
                    kept.append(sample)
                except ValueError as err:
                    if settings.on_bad_sample == "error":
                        raise
                    left_out.append((sample, str(err)))
            texts = answer_batch(model, processor, kept, images, settings.max_new_tokens) if kept else []
            for sample, text in zip(kept, texts):
                file.write(json.dumps(answer_record(sample, text, model_id, benchmark), ensure_ascii=False) + "\n")
            file.flush()  # a killed run keeps every finished batch
            written += len(texts)
            if progress is not None:
                progress(min(start + settings.batch_size, len(samples)), len(samples))
    return written, left_out


# --------------------------------------------------------------------------------------------
# the two entry points
# --------------------------------------------------------------------------------------------


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
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    earlier: list[dict] = []
    if answers_path.exists():
        drop_torn_tail(answers_path)
        earlier, bad = read_answers(answers_path)
        _check_bad(bad, settings.on_bad_sample)
    info = run_info(model_dir, model)
    check_same_model(Path(out_dir) / RESULTS_FILE, info)  # before reusing its answers or spending time on new ones
    answered = match_answers(samples, earlier)
    todo = [s for s, text in zip(samples, answered) if text is None]
    generated, left_out = generate_answers(model, processor, todo, answers_path, model_id=info.model_id,
                                           benchmark=bench.name, settings=settings, progress=progress)
    dropped = {id(s) for s, _ in left_out}
    samples = [s for s in samples if id(s) not in dropped]
    report = _score_and_record(bench, samples, answers_path, Path(out_dir), data, info, settings,
                               skipped + [why for _, why in left_out], loose=False)
    report.generated, report.reused = generated, len(samples) + len(left_out) - len(todo)
    return report


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
        info = RunInfo(_first_model_id(answers_path) or info.model_id)
    return _score_and_record(bench, samples, answers_path, Path(out_dir), data, info, settings, skipped, loose=True)


def _first_model_id(answers_path: Path) -> str | None:
    with open(answers_path, encoding="utf-8") as file:
        try:
            first = json.loads(file.readline())
        except json.JSONDecodeError:
            return None
    return first.get("model_id") if isinstance(first, dict) else None


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
    answers, bad = read_answers(answers_path)
    _check_bad(bad, settings.on_bad_sample)
    skipped = skipped + bad
    found = match_answers(samples, answers, loose)
    scored = [(s, text) for s, text in zip(samples, found) if text is not None]
    scores = bench.score([s for s, _ in scored], [text for _, text in scored]) if scored else {}
    missing = len(samples) - len(scored)
    scores = {**scores, **({"missing": missing} if missing else {}), **({"skipped": len(skipped)} if skipped else {})}
    results_path = write_results(out_dir / RESULTS_FILE, bench.name, scores, info)
    report = EvalReport(bench.name, scores, answers_path, results_path, reused=len(scored), skipped=skipped)
    if any(s.target is None for s in samples):  # no local ground truth (a test split): its server scores it
        upload = bench.submission(samples, [text or "" for text in found], Path(data) if data is not None else None)
        if upload is not None:
            name, payload = upload
            report.submission_path = write_json_atomic(answers_path.parent / name, payload)
    return report


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


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
    """An output folder belongs to one model: results.json of another config hash is an error."""
    old = load_results(path) if path.exists() else {}
    if old.get("config_hash") and info.config_hash and old["config_hash"] != info.config_hash:
        raise ValueError(f"{path} holds results of another model (config hash {old['config_hash']}, "
                         f"this one {info.config_hash}); give another --out")


def write_results(path: Path, benchmark: str, scores: dict[str, float], info: RunInfo) -> Path:
    """Merge one benchmark's scores into results.json (other benchmarks kept), atomically."""
    check_same_model(path, info)
    old = load_results(path) if path.exists() else {}
    run = {
        "model_id": info.model_id,
        "pattern": info.pattern if info.pattern is not None else old.get("pattern"),
        "config_hash": info.config_hash or old.get("config_hash"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    benchmarks = {k: v for k, v in old.items() if k not in RUN_KEYS}
    benchmarks[benchmark] = scores
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
    known = BENCHMARKS[benchmark].headline if benchmark in BENCHMARKS else None
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


__all__ = [
    "ANSWERS_FILE", "RESULTS_FILE", "Comparison", "EvalReport", "EvalSettings", "RunInfo", "answer_batch",
    "compare_results", "evaluate", "match_answers", "plot_comparison", "read_answers", "score_only", "write_results",
]
