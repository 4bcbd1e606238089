"""Image ablation: the same questions asked with each question's image replaced, to see whether a model looks.

`deranged`: every question is shown another question's image (a seeded derangement: one
cycle through all the questions that have an image, so none keeps its own); `blank`: a
uniform mid-gray image. A model that reads the picture scores lower under both; one that
answers from the question alone scores the same. Text-only questions are asked unchanged.
"""

from __future__ import annotations

import dataclasses
import random

from PIL import Image

from .benchmarks.base import Sample

ABLATIONS = ("deranged", "blank")
BLANK_SIZE = (224, 224)  # the processor resizes it like any image
BLANK_GRAY = (128, 128, 128)


def derangement(n: int, seed: int = 0) -> list[int]:
    """A random permutation of range(n) with no fixed point (Sattolo's algorithm: a single n-cycle)."""
    if n < 2:
        raise ValueError(f"image ablation needs at least 2 questions with an image, got {n}")
    order = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: never itself, which makes the result one cycle
        order[i], order[j] = order[j], order[i]
    return order


def blank_image() -> Image.Image:
    return Image.new("RGB", BLANK_SIZE, BLANK_GRAY)


def ablated(samples: list[Sample], condition: str, seed: int = 0) -> list[Sample]:
    """The samples with their images replaced as `condition` says ("deranged" or "blank")."""
    if condition not in ABLATIONS:
        raise ValueError(f"image ablation: expected one of {', '.join(ABLATIONS)}, got {condition!r}")
    with_image = [k for k, s in enumerate(samples) if s.image is not None]
    if condition == "blank":
        images = {k: blank_image for k in with_image}
    else:
        order = derangement(len(with_image), seed)
        images = {k: samples[with_image[order[i]]].image for i, k in enumerate(with_image)}
    return [dataclasses.replace(s, image=images[k], meta={**s.meta, "ablation": condition}) if k in images else s
            for k, s in enumerate(samples)]


def ablated_benchmark(benchmark: str, condition: str) -> str:
    """The results.json entry of a benchmark's ablated run: `shapes@deranged`."""
    return f"{benchmark}@{condition}"


def base_benchmark(name: str) -> str:
    """`shapes@deranged` -> `shapes`."""
    return name.partition("@")[0]
