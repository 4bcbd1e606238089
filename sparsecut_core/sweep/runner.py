"""Running a sweep: every variant trains the preset's stages into its own folder, then is evaluated with
the image ablation; `sweep.json` and `sweep.md` are rewritten after each one.

    OUT/
      sweep.json, sweep.md       every variant's settings and results; the table (report.py)
      VARIANT/pretrain/, finetune/  the stages' run folders (checkpoints, metrics.jsonl, model/)
      VARIANT/eval/              the benchmark's answers and results.json, true and ablated images
      VARIANT/variant.json       written last: the variant is done and never runs again

A rerun skips the finished variants, resumes a stage from its newest checkpoint and reuses the
answers already given; a longer list of patterns or seeds only runs what is new. A variant that
fails is recorded with its error and the others go on; the next run tries it again. Variants an
earlier call finished in the same folder, trained and scored the same way (the preset unchanged,
the same benchmark and questions) stay in sweep.json and the table: `--seeds 2` after
`--seeds 0,1` gives a table over three seeds.

Variants of one preset share the frozen tower's features (feature_cache.SharedFeatureCaches):
each image passes the tower once per sweep process, for the union of the layers of every
variant, not once per variant. Each variant records what that saved it. The features are kept
in float16 (FEATURE_DTYPE): the seven patterns read all twelve layers of a ViT-S at five views
per hi-res image, 6 GB for 2,000 images in float16 against 12 GB in float32, and every variant
trains and is scored on the same rounded features.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..evaluation.runner import EvalSettings, evaluate
from ..files import write_json_atomic, write_text_atomic
from ..inference.loading import load_pretrained
from ..model.feature_cache import SharedFeatureCaches
from ..model.freezing import STAGES
from ..presets.preset import Preset
from ..presets.stage import train_stage
from ..training.loop import StepLog, TrainingInterrupted
from .plan import Variant, feature_groups, plan_for_preset, variant_preset
from .report import loss_summary, sweep_markdown

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.md"
DONE_FILE = "variant.json"
FEATURE_DTYPE = torch.float16  # how the shared cache keeps the frozen tower's features
MAX_CACHE_BYTES = 8 << 30  # the shared cache's bound; images beyond it pass the tower at every use


@dataclass(frozen=True)
class SweepSpec:
    """What `sparsecut sweep` was asked for (the preset by the name or path it was given)."""

    preset: str
    patterns: tuple[str, ...]
    hi_res: tuple[bool, ...] = (False, True)
    num_shortcuts: tuple[int | None, ...] = (None,)  # None: the preset's count
    seeds: tuple[int, ...] = (0,)
    benchmark: str = "shapes"
    data: str | None = None  # the benchmark's data (evaluation.runner.evaluate); shapes needs none
    limit: int | None = None  # questions per evaluation (None: all)
    max_new_tokens: int = 8
    eval_batch_size: int = 32


@dataclass
class VariantResult:
    name: str
    status: str  # "done" or "failed"
    settings: dict[str, Any]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # condition ("true", "deranged", "blank") -> scores
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> loss summary (report.loss_summary)
    features: dict[str, Any] = field(default_factory=dict)  # tower work done and saved by sharing
    wall_s: float = 0.0  # this variant's time in the sweep process that finished it
    resumed: bool = False  # it continued work an earlier, stopped sweep had started
    error: str | None = None


class SweepProgress:
    """What a sweep reports as it goes (the CLI draws it); every method is optional."""

    def variant_started(self, variant: Variant, index: int, total: int, stage: str) -> None: ...

    def step(self, log: StepLog) -> None: ...

    def variant_finished(self, result: VariantResult, reused: bool) -> None: ...


def stages_of(preset: Preset) -> list[str]:
    """The training stages the preset sets up, in SPEC's order."""
    stages = [s for s in STAGES if s in preset.train]
    if "finetune" not in stages:
        raise ValueError(f"preset {preset.name} has no [train.finetune]: a sweep trains and evaluates a finetuned model")
    return stages


def variant_settings(preset: Preset, spec: SweepSpec, variant: Variant) -> dict[str, Any]:
    """Everything that makes a variant's result what it is: a finished variant with other settings is not reused."""
    trained = variant_preset(preset, variant)
    return {
        "pattern": variant.pattern, "hi_res": variant.hi_res, "num_shortcuts": variant.num_shortcuts,
        "seed": variant.seed, "pairs": [list(p) for p in variant.pairs], "preset": preset.name,
        "sparsecut": trained.sparsecut, "train": trained.train, "benchmark": spec.benchmark, "data": spec.data,
        "limit": spec.limit,
        "max_new_tokens": spec.max_new_tokens,
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _read_done(done: Path) -> VariantResult:
    """A variant's done marker; raises ValueError naming the file when it is not one."""
    try:
        return VariantResult(**json.loads(done.read_text()))
    except (json.JSONDecodeError, TypeError) as why:
        raise ValueError(f"{done}: not a sweep variant's done marker ({why})") from None


def _finished(folder: Path, settings: dict[str, Any]) -> VariantResult | None:
    """The variant's result if its folder holds a finished run of these settings; raises if of others."""
    done = folder / DONE_FILE
    if not done.is_file():
        return None
    result = _read_done(done)
    if result.settings != _jsonable(settings):
        raise ValueError(f"{folder} holds a finished run of other settings (the preset changed?): "
                         f"remove it or sweep into another folder")
    return result


EVAL_KEYS = ("preset", "benchmark", "data", "limit", "max_new_tokens")  # settings that make two scores comparable


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """What two variants of one table share: how they are scored, and how they train but for the settings a
    variant sets (pattern, hi-res, seed)."""
    return {**{k: settings.get(k) for k in EVAL_KEYS},
            "train": {stage: {k: v for k, v in cfg.items() if k != "seed"} for stage, cfg in settings["train"].items()},
            "sparsecut": {k: v for k, v in settings["sparsecut"].items() if k not in ("pattern", "hi_res")}}


def earlier_results(out: Path, settings: dict[str, Any], exclude: set[str]) -> list[VariantResult]:
    """Finished variants in the sweep folder, other than those named, trained and scored as these settings
    are (the preset unchanged, the same benchmark and questions)."""
    wanted = _comparable(settings)
    found = []
    for done in sorted(out.glob(f"*/{DONE_FILE}")):
        if done.parent.name in exclude:
            continue
        result = _read_done(done)
        try:
            same = result.status == "done" and _comparable(result.settings) == wanted
        except (KeyError, AttributeError) as why:
            raise ValueError(f"{done}: not a sweep variant's done marker ({why})") from None
        if same:
            found.append(result)
    return found


def _feature_use(caches: SharedFeatureCaches, before: tuple[int, int, float]) -> dict[str, Any]:
    misses, hits, seconds = caches.misses - before[0], caches.hits - before[1], caches.seconds - before[2]
    per_image = caches.seconds / caches.misses if caches.misses else 0.0
    shared = max(0, caches.tallied - misses)  # images whose features an earlier variant computed
    return {"tower_s": round(seconds, 3), "images_computed": misses, "images_from_cache": hits,
            "distinct_images": caches.tallied, "from_other_variants": shared,
            "saved_s": round(shared * per_image, 3)}


def _evaluate(model_dir: Path, folder: Path, spec: SweepSpec, caches: SharedFeatureCaches | None) -> dict:
    model, processor = load_pretrained(model_dir)
    model.requires_grad_(False)
    if caches is not None:
        caches.attach(model)
    settings = EvalSettings(batch_size=spec.eval_batch_size, max_new_tokens=spec.max_new_tokens, limit=spec.limit,
                            image_ablation=True)
    report = evaluate(model, processor, spec.benchmark, out_dir=folder / "eval", model_dir=model_dir,
                      data=Path(spec.data) if spec.data is not None else None, settings=settings)
    return {"true": report.metrics, **report.ablations}


def run_variant(
    preset: Preset,
    spec: SweepSpec,
    variant: Variant,
    folder: Path,
    *,
    caches: SharedFeatureCaches,
    cpu: bool = False,
    cache_dir: str | Path | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    on_step: Callable[[StepLog], None] | None = None,
) -> VariantResult:
    """Train the variant's stages (each resumed where it stopped), evaluate it, and write its done marker."""
    settings = variant_settings(preset, spec, variant)
    trained = variant_preset(preset, variant)
    started = time.perf_counter()
    resumed = folder.exists() and any(folder.iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    caches.start_tally()
    before = (caches.misses, caches.hits, caches.seconds)
    init_from, stages = None, {}
    for stage in stages_of(trained):
        out = folder / stage
        on_stage(stage)
        if not (out / "model").is_dir():  # a stage whose model is saved is done
            train_stage(trained, stage, out, init_from=init_from, resume=True, cpu=cpu, cache_dir=cache_dir,
                        on_step=on_step, feature_cache=caches)
        stages[stage] = loss_summary(out / "metrics.jsonl")
        init_from = out / "model"
    on_stage("eval")
    cached = bool(trained.train["finetune"].get("cache_vision_features"))
    scores = _evaluate(init_from, folder, spec, caches if cached else None)
    result = VariantResult(name=variant.name, status="done", settings=_jsonable(settings), scores=scores,
                           stages=stages, features=_feature_use(caches, before),
                           wall_s=round(time.perf_counter() - started, 1), resumed=resumed)
    write_json_atomic(folder / DONE_FILE, asdict(result))
    return result


@dataclass
class SweepReport:
    out: Path
    results: list[VariantResult]  # the plan's variants (sweep.json also keeps those earlier calls finished)
    ran: list[str]  # variants that ran (or resumed) in this call; the others were finished before
    groups: list[dict[str, Any]]  # feature groups of the plan (plan.feature_groups)

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status == "failed"]


def write_sweep(out: Path, spec: SweepSpec, results: Sequence[VariantResult], groups: list[dict]) -> None:
    """sweep.json and sweep.md, each written whole to a temporary file and renamed."""
    done = [r for r in results if r.status == "done"]
    saved = sum(r.features.get("saved_s", 0.0) for r in done)
    data = {"spec": asdict(spec), "feature_groups": groups,
            "features": {"tower_s": round(sum(r.features.get("tower_s", 0.0) for r in done), 3),
                         "saved_s": round(saved, 3)},
            "variants": [asdict(r) for r in results]}
    write_json_atomic(out / SWEEP_FILE, data)
    write_text_atomic(out / TABLE_FILE, sweep_markdown(data))


def run_sweep(
    preset: Preset,
    spec: SweepSpec,
    out: str | Path,
    *,
    cpu: bool = False,
    cache_dir: str | Path | None = None,
    progress: SweepProgress | None = None,
    max_cache_bytes: int = MAX_CACHE_BYTES,
) -> SweepReport:
    """Every variant of the spec, the finished ones reused; sweep.json/sweep.md rewritten after each."""
    progress = progress or SweepProgress()
    variants = plan_for_preset(preset, spec.patterns, spec.hi_res, spec.num_shortcuts, spec.seeds)
    stages_of(preset)  # a preset without finetuning fails before anything trains
    groups = [asdict(g) for g in feature_groups(variants)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    caches = SharedFeatureCaches(max_cache_bytes, layers=sorted({i for v in variants for i in v.vit_layers}),
                                 dtype=FEATURE_DTYPE)
    results: list[VariantResult] = []
    ran: list[str] = []
    earlier = (earlier_results(out, _jsonable(variant_settings(preset, spec, variants[0])), {v.name for v in variants})
               if variants else [])
    for index, variant in enumerate(variants):
        folder = out / variant.name
        settings = variant_settings(preset, spec, variant)
        try:
            finished = _finished(folder, settings)
            if finished is not None:
                results.append(finished)
                progress.variant_finished(finished, reused=True)
                continue
            ran.append(variant.name)
            result = run_variant(
                preset, spec, variant, folder, caches=caches, cpu=cpu, cache_dir=cache_dir,
                on_stage=lambda stage, v=variant, k=index: progress.variant_started(v, k, len(variants), stage),
                on_step=progress.step,
            )
        except TrainingInterrupted:  # Ctrl-C: the stage saved a checkpoint; the whole sweep stops
            write_sweep(out, spec, results + earlier, groups)
            raise
        except Exception as error:  # one variant's failure is reported; the others still run
            result = VariantResult(name=variant.name, status="failed", settings=_jsonable(settings),
                                   error=f"{type(error).__name__}: {error}")
        results.append(result)
        progress.variant_finished(result, reused=False)
        write_sweep(out, spec, results + earlier, groups)
    write_sweep(out, spec, results + earlier, groups)
    return SweepReport(out, results, ran, groups)


def load_sweep(out: str | Path) -> dict[str, Any]:
    """A sweep folder's sweep.json; raises ValueError naming the folder when there is none."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise ValueError(f"{out}: no {SWEEP_FILE} (not a sweep folder, or no variant has finished yet)")
    return json.loads(path.read_text())
