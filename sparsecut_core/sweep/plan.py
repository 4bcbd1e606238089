"""The variants of a sweep: every combination of pattern, hi-res, shortcut count and seed.

A plan is data: each `Variant` names its run folder and the settings that set it
apart from the preset, and the pairs it will train with, resolved against the
preset's depths so that a bad pattern fails before anything trains. Variants that
read the same tower layers at the same views share frozen features
(`feature_groups`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from sparsecut_core.model.patterns import PATTERN_NAMES, Pair, build_pattern, random_pattern, validate_pairs
from sparsecut_core.presets.preset import Preset

RANDOM = "random"
_PAIRS = re.compile(r"^pairs:(\d+>\d+(?:/\d+>\d+)*)$")  # pairs:11>1/7>5 = ViT 11 -> LLM 1, ViT 7 -> LLM 5
_FIXED_COUNT = ("llava", "dense-uniform", "dense-bottom")  # their n is set by the pattern itself


@dataclass(frozen=True)
class Variant:
    pattern: str  # a pattern name, "random" or "pairs:i>j/..."
    hi_res: bool
    num_shortcuts: int | None  # None where the pattern fixes it
    seed: int
    pairs: tuple[Pair, ...] = field(compare=False)

    @property
    def name(self) -> str:
        """The run folder's name: readable, unique within a plan, stable across plans."""
        pattern = self.pattern.replace("pairs:", "pairs-").replace(">", "x").replace("/", "-")
        n = "" if self.num_shortcuts is None else f"-n{self.num_shortcuts}"
        return f"{pattern}{n}-hires-{'on' if self.hi_res else 'off'}-seed{self.seed}"

    @property
    def vit_layers(self) -> tuple[int, ...]:
        return tuple(sorted({i for i, _ in self.pairs}))


def parse_patterns(text: str) -> list[str]:
    """A `--patterns` value: comma-separated names, `random`, or explicit `pairs:i>j/i>j` lists."""
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise ValueError("--patterns is empty: give at least one pattern")
    for p in patterns:
        if p not in PATTERN_NAMES and p != RANDOM and not _PAIRS.match(p):
            raise ValueError(
                f"unknown pattern {p!r}: choose from {', '.join(PATTERN_NAMES + (RANDOM,))} "
                "or give pairs as pairs:VIT>LLM/VIT>LLM"
            )
    if len(set(patterns)) != len(patterns):
        raise ValueError(f"--patterns lists a pattern twice: {text}")
    return patterns


def resolve_variant_pairs(
    pattern: str, num_vit_layers: int, num_llm_layers: int, num_shortcuts: int | None, seed: int
) -> list[Pair]:
    """The pairs one variant trains with; raises ValueError naming the pattern when they do not fit."""
    if pattern in PATTERN_NAMES:
        return build_pattern(pattern, num_vit_layers, num_llm_layers, num_shortcuts)  # its errors name it
    try:
        if pattern == RANDOM:
            return random_pattern(num_vit_layers, num_llm_layers, num_shortcuts, seed)
        pairs = [tuple(int(x) for x in pair.split(">")) for pair in _PAIRS.match(pattern).group(1).split("/")]
        return validate_pairs(pairs, num_vit_layers, num_llm_layers)
    except ValueError as error:
        raise ValueError(f"sweep pattern {pattern!r}: {error}") from None


def plan_sweep(
    patterns: Sequence[str],
    hi_res: Sequence[bool],
    num_shortcuts: Sequence[int | None],
    seeds: Sequence[int],
    num_vit_layers: int,
    num_llm_layers: int,
) -> list[Variant]:
    """Every combination, in a fixed order (seed outermost, so that a cut-short sweep covers every
    pattern once before it repeats one). A pattern whose count is fixed (`llava`, dense, explicit
    pairs) appears once per (hi-res, seed) whatever `num_shortcuts` lists."""
    if not seeds:
        raise ValueError("a sweep needs at least one seed")
    if not hi_res:
        raise ValueError("a sweep needs at least one hi-res setting")
    counts = list(num_shortcuts) or [None]
    variants: list[Variant] = []
    seen: set[str] = set()
    for seed, pattern, fused, n in itertools.product(seeds, patterns, hi_res, counts):
        n = None if (pattern in _FIXED_COUNT or _PAIRS.match(pattern)) else n
        pairs = resolve_variant_pairs(pattern, num_vit_layers, num_llm_layers, n, seed)
        variant = Variant(pattern, bool(fused), n, int(seed), tuple(pairs))
        if variant.name not in seen:
            seen.add(variant.name)
            variants.append(variant)
    return variants


@dataclass(frozen=True)
class FeatureGroup:
    """Variants whose frozen tower runs over the same views: one feature pass serves them all."""

    hi_res: bool
    vit_layers: tuple[int, ...]  # the union of the layers its variants read
    variants: tuple[str, ...]

    @property
    def tower_passes_saved(self) -> int:
        return len(self.variants) - 1


def feature_groups(variants: Sequence[Variant]) -> list[FeatureGroup]:
    """Variants grouped by the views their tower sees (hi-res on or off); each group's features are
    computed once, for the union of its variants' layers."""
    groups: dict[bool, list[Variant]] = {}
    for variant in variants:
        groups.setdefault(variant.hi_res, []).append(variant)
    return [
        FeatureGroup(
            hi_res=fused,
            vit_layers=tuple(sorted({i for v in members for i in v.vit_layers})),
            variants=tuple(v.name for v in members),
        )
        for fused, members in sorted(groups.items())
    ]


def variant_preset(preset: Preset, variant: Variant) -> Preset:
    """The preset one variant trains: its pairs written out (so that the run folder's config names them
    whatever the generator), its hi-res setting, and its seed in both stages; all else as the preset."""
    sparsecut = {k: v for k, v in preset.sparsecut.items() if k != "num_shortcuts"}
    sparsecut.update(pattern=[list(pair) for pair in variant.pairs], hi_res=variant.hi_res)
    train = {stage: {**settings, "seed": variant.seed} for stage, settings in preset.train.items()}
    return dataclasses.replace(
        preset, name=f"{preset.name}/{variant.name}", sparsecut=sparsecut, train=train,
        description=f"{preset.description}; sweep variant {variant.name}",
    )


def plan_for_preset(
    preset: Preset, patterns: Sequence[str], hi_res: Sequence[bool], num_shortcuts: Sequence[int | None],
    seeds: Sequence[int],
) -> list[Variant]:
    """`plan_sweep` against the preset's tower and LLM depths; a count of None is the preset's own."""
    config = preset.sparsecut_config()
    counts = [preset.sparsecut.get("num_shortcuts") if n is None else n for n in (num_shortcuts or [None])]
    return plan_sweep(patterns, hi_res, counts, seeds, config.num_vit_layers, config.num_llm_layers)
