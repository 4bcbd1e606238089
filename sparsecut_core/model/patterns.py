"""Shortcut patterns: which ViT layer i feeds which LLM layer j.

A pattern is a list of (i, j) pairs, both 1-based (SPEC "Notation"): i names
`hidden_states[i]` of the vision tower, j the *input* of decoder layer j. The
named generators build the patterns studied in the paper for any depth.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

Pair = tuple[int, int]

PATTERN_NAMES = (
    "llava",
    "sparse-uniform",
    "sparse-reverse-uniform",
    "sparse-bottom",
    "sparse-top",
    "dense-uniform",
    "dense-bottom",
)


def _sparse_vit_ends(num_vit_layers: int, n: int) -> list[int]:
    # top = L_v - 1 (LLaVA's penultimate layer), then every s_v layers downwards
    stride = num_vit_layers // n
    return [num_vit_layers - 1 - k * stride for k in range(n)]


def _u_shape(vit_ends: Sequence[int], llm_ends: Sequence[int]) -> list[Pair]:
    """Deepest ViT end to shallowest LLM end (i1 > i2 iff j1 < j2)."""
    return list(zip(sorted(vit_ends, reverse=True), sorted(llm_ends)))


def _aligned(vit_ends: Sequence[int], llm_ends: Sequence[int]) -> list[Pair]:
    """Deepest ViT end to deepest LLM end (i1 > i2 iff j1 > j2)."""
    return list(zip(sorted(vit_ends), sorted(llm_ends)))


def _check_count(name: str, n: int, num_vit_layers: int, num_llm_layers: int) -> None:
    if n < 1:
        raise ValueError(f"pattern {name!r}: num_shortcuts must be >= 1, got {n}")
    if n > num_llm_layers:
        raise ValueError(
            f"pattern {name!r}: {n} shortcuts need at least {n} LLM layers, the LLM has {num_llm_layers}"
        )
    if name.startswith("sparse") and n > num_vit_layers - 1:
        raise ValueError(
            f"pattern {name!r}: {n} shortcuts need at least {n + 1} ViT layers, the ViT has {num_vit_layers}"
        )


def build_pattern(
    name: str, num_vit_layers: int, num_llm_layers: int, num_shortcuts: int | None = None
) -> list[Pair]:
    """The (vit_layer, llm_layer) pairs of a named pattern, sorted by LLM layer.

    `num_shortcuts` is n for the sparse patterns (default 8); the dense ones use
    n = L_v and `llava` a single shortcut, so for them it must be None or match.
    """
    if name not in PATTERN_NAMES:
        raise ValueError(f"unknown pattern {name!r}; choose one of {', '.join(PATTERN_NAMES)}")
    L_v, L_t = num_vit_layers, num_llm_layers
    if name == "llava":
        _check_count(name, 1, L_v, L_t)
        return [(L_v - 1, 1)]
    if name.startswith("dense"):
        if num_shortcuts is not None and num_shortcuts != L_v:
            raise ValueError(f"pattern {name!r} uses every ViT layer (n = {L_v}), got num_shortcuts={num_shortcuts}")
        n = L_v
        _check_count(name, n, L_v, L_t)
        vit_ends = list(range(1, L_v + 1))
        if name == "dense-bottom":
            llm_ends = list(range(1, n + 1))
        else:  # evenly spread over 1..L_t
            llm_ends = [1 + (k * L_t) // n for k in range(n)]
        return sort_pairs(_u_shape(vit_ends, llm_ends))

    n = 8 if num_shortcuts is None else num_shortcuts
    _check_count(name, n, L_v, L_t)
    vit_ends = _sparse_vit_ends(L_v, n)
    if name in ("sparse-uniform", "sparse-reverse-uniform"):
        llm_ends = [1 + k * (L_t // n) for k in range(n)]
    elif name == "sparse-bottom":
        llm_ends = list(range(1, n + 1))
    else:  # sparse-top
        llm_ends = list(range(L_t - n + 1, L_t + 1))
    order = _aligned if name == "sparse-reverse-uniform" else _u_shape
    return sort_pairs(order(vit_ends, llm_ends))


def sort_pairs(pairs: Iterable[Sequence[int]]) -> list[Pair]:
    """Pairs as int tuples, ordered by LLM layer then ViT layer (the order they act in)."""
    return sorted(((int(i), int(j)) for i, j in pairs), key=lambda p: (p[1], p[0]))


def validate_pairs(pairs: Sequence[Sequence[int]], num_vit_layers: int, num_llm_layers: int) -> list[Pair]:
    """Checks an explicit pattern and returns it sorted; raises ValueError naming the bad pair."""
    if len(pairs) == 0:
        raise ValueError("shortcut pattern is empty: give at least one (vit_layer, llm_layer) pair")
    seen: set[Pair] = set()
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"shortcut {list(pair)} is not a (vit_layer, llm_layer) pair")
        i, j = int(pair[0]), int(pair[1])
        if not 1 <= i <= num_vit_layers:
            raise ValueError(f"shortcut ({i}, {j}): ViT layer {i} is out of range 1..{num_vit_layers}")
        if not 1 <= j <= num_llm_layers:
            raise ValueError(f"shortcut ({i}, {j}): LLM layer {j} is out of range 1..{num_llm_layers}")
        if (i, j) in seen:
            raise ValueError(f"shortcut ({i}, {j}) appears twice in the pattern")
        seen.add((i, j))
    return sort_pairs(pairs)


def resolve_pattern(
    pattern: str | Sequence[Sequence[int]],
    num_vit_layers: int,
    num_llm_layers: int,
    num_shortcuts: int | None = None,
) -> list[Pair]:
    """A pattern name or an explicit pair list, checked, as sorted pairs."""
    if isinstance(pattern, str):
        pairs = build_pattern(pattern, num_vit_layers, num_llm_layers, num_shortcuts)
    else:
        pairs = list(pattern)
    return validate_pairs(pairs, num_vit_layers, num_llm_layers)


def random_pattern(num_vit_layers: int, num_llm_layers: int, num_shortcuts: int | None, seed: int) -> list[Pair]:
    """The ends of `sparse-uniform` joined by a seeded random bijection instead of the U-shape.

    The reviewers' control for the ordering claim: the same layers meet, only
    which ViT end feeds which LLM end is drawn (reproducibly, from `seed`).
    """
    ends = build_pattern("sparse-uniform", num_vit_layers, num_llm_layers, num_shortcuts)
    vit_ends = sorted(i for i, _ in ends)
    llm_ends = sorted(j for _, j in ends)
    random.Random(seed).shuffle(vit_ends)
    return sort_pairs(zip(vit_ends, llm_ends))
