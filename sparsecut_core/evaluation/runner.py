"""Running a benchmark: the questions not answered yet are answered (answers.py), then all are scored
like the official scripts and merged into `<out>/results.json` (results.py).

An earlier answer is reused only under the same key (keys.py): the same weights and config,
generation settings and question as asked. Answers of other settings or inputs are asked
again; an answers file of another model is an error, as mixing two models in one output
folder would be.

`score_only` scores an existing answers file, including one written by LLaVA's own
`model_vqa*.py` scripts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from ..model.feature_cache import caching_features
from .ablation import ABLATIONS, ablated, ablated_benchmark
from .answers import ANSWERS_FILE, Progress, drop_torn_tail, ensure_pad_token, first_model_id, generate_answers, \
    generate_kwargs, keyed_answers, latest_records, match_answers, question_prompt, read_answers
from .benchmarks import get_benchmark
from .benchmarks.base import Benchmark, Loaded, Sample
from .keys import MODEL_FIELDS, STALE_REASONS, answer_key, generation_settings, input_digest, other_model, \
    processor_digest, stale_reason
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
    generated: int = 0  # answers produced by this run (new questions and recomputed ones)
    reused: int = 0  # answers found in the answers file from an earlier run, under the same key
    recomputed: dict[str, int] = field(default_factory=dict)  # of `generated`: stale earlier answers, per reason
    generation: dict = field(default_factory=dict)  # the settings the answers were generated with (keys.py)
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
    """Answer the benchmark's questions not yet in `<out_dir>/<benchmark>/answers.jsonl`, then score them all.

    `model_dir` is the folder `model` was loaded from (its weights id keys the answers); without
    it the weights are hashed in memory.
    """
    bench = get_benchmark(benchmark).drawn_for(processor)
    samples, skipped = select_samples(bench.load(data, settings.split, settings.limit), settings, asking=True)
    answers_path = Path(out_dir) / bench.name / ANSWERS_FILE
    info = run_info(model_dir, model)
    check_same_model(Path(out_dir) / RESULTS_FILE, info)  # before reusing its answers or spending time on new ones
    ensure_pad_token(processor.tokenizer)  # the pad token is one of the generation settings
    generation = generation_settings(model, generate_kwargs(model, processor.tokenizer, settings.max_new_tokens))
    with caching_features(model):  # the ablation asks about every image again
        asked = _Asked(model, processor, info, generation, settings, progress)
        keys = asked.keys(samples)
        generated, left_out, recomputed = asked.answer_missing(samples, keys, answers_path, bench.name)
        dropped = {id(s) for s, _ in left_out}
        kept = [(s, k) for s, k in zip(samples, keys) if id(s) not in dropped]
        report = _score_and_record(bench, [s for s, _ in kept], answers_path, Path(out_dir), data, info, settings,
                                   skipped + [why for _, why in left_out], keys=[k for _, k in kept],
                                   generation=generation)
        report.generated, report.recomputed, report.generation = generated, recomputed, generation
        report.reused = len(samples) - generated - len(left_out)
        if settings.image_ablation:
            _answer_ablated(asked, bench, [s for s, _ in kept], answers_path, Path(out_dir), report)
    return report


def _answer_ablated(asked: _Asked, bench: Benchmark, samples: list[Sample], answers_path: Path, out_dir: Path,
                    report: EvalReport) -> None:
    """The same questions with deranged and with blank images, each condition in its own answers file."""
    for condition in ABLATIONS:
        changed = ablated(samples, condition)  # every image was readable in the true-image pass
        changed_keys = asked.keys(changed)
        path = answers_path.with_name(f"answers.{condition}.jsonl")
        name = ablated_benchmark(bench.name, condition)
        new, _, stale = asked.answer_missing(changed, changed_keys, path, name)
        scores, _, _, _ = _scores(bench, changed, path, asked.settings, loose=False, keys=changed_keys)
        report.ablations[condition] = scores
        write_results(out_dir / RESULTS_FILE, name, scores, asked.info, asked.generation)
        report.generated += new
        for why, count in stale.items():
            report.recomputed[why] = report.recomputed.get(why, 0) + count


@dataclass(frozen=True)
class _Asked:
    """One model asked with one set of generation settings: keys its questions and answers the missing ones."""

    model: Any
    processor: Any
    info: RunInfo
    generation: dict
    settings: EvalSettings
    progress: Progress | None

    def keys(self, samples: list[Sample]) -> list[dict | None]:
        model = {"weights_id": self.info.weights_id, "config_hash": self.info.config_hash}
        processor = processor_digest(self.processor)
        return [answer_key(model, self.generation, input_digest(question_prompt(self.processor, s), s, processor))
                for s in samples]

    def answer_missing(
        self, samples: list[Sample], keys: list[dict | None], answers_path: Path, benchmark: str
    ) -> tuple[int, list[tuple[Sample, str]], dict[str, int]]:
        """Answer the samples without an answer under their key in `answers_path`.

        Returns (answers written, samples left out with why, stale earlier answers asked again per reason).
        """
        answers_path.parent.mkdir(parents=True, exist_ok=True)
        earlier: list[dict] = []
        if answers_path.exists():
            drop_torn_tail(answers_path)
            earlier, bad = read_answers(answers_path)
            _check_bad(bad, self.settings.on_bad_sample)
        mine = {f: getattr(self.info, f) for f in MODEL_FIELDS}
        other = other_model(earlier, mine)
        if other is not None:
            raise ValueError(f"{answers_path} holds answers of another model (weights id {other['weights_id']}, "
                             f"config hash {other['config_hash']}; this one {mine['weights_id']}, "
                             f"{mine['config_hash']}); give another --out, or delete "
                             f"{answers_path.parent.parent} to start fresh")
        found = keyed_answers(samples, keys, earlier)
        latest = latest_records(samples, earlier)
        todo = [k for k, text in enumerate(found) if text is None]
        recomputed: dict[str, int] = {}
        for k in todo:
            if latest[k] is not None and keys[k] is not None:
                why = STALE_REASONS[stale_reason(latest[k], keys[k])]
                recomputed[why] = recomputed.get(why, 0) + 1
        generated, left_out = generate_answers(
            self.model, self.processor, [samples[k] for k in todo], answers_path, keys=[keys[k] for k in todo],
            model_id=self.info.model_id, benchmark=benchmark, batch_size=self.settings.batch_size,
            max_new_tokens=self.settings.max_new_tokens, on_bad_sample=self.settings.on_bad_sample,
            progress=self.progress)
        return generated, left_out, recomputed


def score_only(
    benchmark: str,
    *,
    out_dir: Path,
    data: Path | None = None,
    answers_path: Path | None = None,
    model_dir: Path | None = None,
    settings: EvalSettings = EvalSettings(),
) -> EvalReport:
    """Score an existing answers file (ours or LLaVA's) without loading a model.

    The answers scored must all come from one model and one set of generation settings (their
    keys say so); a file without keys (LLaVA's) is scored as it is.
    """
    bench = get_benchmark(benchmark)
    answers_path = Path(answers_path) if answers_path is not None else Path(out_dir) / bench.name / ANSWERS_FILE
    if not answers_path.is_file():
        raise ValueError(f"no answers to score: {answers_path} does not exist")
    samples, skipped = select_samples(bench.load(data, settings.split, settings.limit), settings, asking=False)
    info = run_info(model_dir)
    if info.config_hash is None:  # no model folder: name the run after the model that wrote the answers
        info = RunInfo(first_model_id(answers_path) or info.model_id, weights_id=info.weights_id)
    answers, _ = read_answers(answers_path)
    written_by = _one_writer(answers_path, latest_records(samples, answers), info)
    # the weights that wrote the answers, as their keys say; a file without keys does not say
    info = dataclasses.replace(info, weights_id=written_by["weights_id"] if written_by is not None else None,
                               config_hash=info.config_hash or (written_by or {}).get("config_hash"))
    return _score_and_record(bench, samples, answers_path, Path(out_dir), data, info, settings, skipped, loose=True,
                             generation=written_by["generation"] if written_by is not None else None)


def _one_writer(answers_path: Path, records: list[dict | None], info: RunInfo) -> dict | None:
    """The key (less its input) that all the answers to score share; None for a file without keys.

    Answers of several models or settings, or of another model than `info`'s, are an error.
    """
    writers = {json.dumps({k: v for k, v in r["key"].items() if k != "input"}, sort_keys=True) if
               isinstance(r.get("key"), dict) else "none" for r in records if r is not None}
    if len(writers) > 1:
        raise ValueError(f"{answers_path} mixes answers of {len(writers)} models or generation settings "
                         f"(or answers with and without keys); rerun `sparsecut eval` without --score-only to "
                         f"ask the stale ones again, or give another --out to start fresh")
    if not writers or writers == {"none"}:
        return None
    writer = json.loads(writers.pop())
    for name in MODEL_FIELDS:
        mine = getattr(info, name)
        if mine is not None and writer.get(name) != mine:
            raise ValueError(f"{answers_path} holds answers of another model ({name} {writer.get(name)}, "
                             f"this one {mine}); give the model folder that wrote them, or another --out")
    return writer


def _scores(
    bench: Benchmark, samples: list[Sample], answers_path: Path, settings: EvalSettings, loose: bool,
    keys: list[dict | None] | None = None,
) -> tuple[dict[str, float], list[str | None], int, list[str]]:
    """The benchmark's scores of the answered samples: (scores, each sample's answer, answered, bad lines).

    With `keys`, only answers under each sample's key count (a run's own); else the latest per question.
    """
    answers, bad = read_answers(answers_path)
    _check_bad(bad, settings.on_bad_sample)
    found = keyed_answers(samples, keys, answers) if keys is not None else match_answers(samples, answers, loose)
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
    loose: bool = False,
    keys: list[dict | None] | None = None,
    generation: dict | None = None,
) -> EvalReport:
    scores, found, scored, bad = _scores(bench, samples, answers_path, settings, loose, keys)
    skipped = skipped + bad
    missing = len(samples) - scored
    scores = {**scores, **({"missing": missing} if missing else {}), **({"skipped": len(skipped)} if skipped else {})}
    results_path = write_results(out_dir / RESULTS_FILE, bench.name, scores, info, generation)
    report = EvalReport(bench.name, scores, answers_path, results_path, reused=scored, skipped=skipped)
    if any(s.target is None for s in samples):  # no local ground truth (a test split): its server scores it
        upload = bench.submission(samples, [text or "" for text in found], Path(data) if data is not None else None)
        if upload is not None:
            name, payload = upload
            report.submission_path = write_json_atomic(answers_path.parent / name, payload)
    return report
