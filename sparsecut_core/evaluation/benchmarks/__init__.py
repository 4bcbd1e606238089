"""The benchmarks `sparsecut eval` knows, by name: one reader and scorer per family."""

from __future__ import annotations

from .base import Benchmark
from .mmbench import MMBench, MMBenchCN
from .pope import POPE
from .scienceqa import ScienceQA
from .seed import SEED
from .shapes import Shapes
from .vqa import GQA, VQAv2, TextVQA, VizWiz


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (VQAv2(), GQA(), VizWiz(), ScienceQA(), TextVQA(), POPE(), MMBench(), MMBenchCN(), SEED(),
                        Shapes())
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
