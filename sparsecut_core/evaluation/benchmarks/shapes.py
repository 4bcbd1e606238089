"""The built-in synthetic `shapes` test split as a benchmark: exact match, overall and per question kind."""

from __future__ import annotations

import copy
from collections import defaultdict

from ...data.shapes import SHORT_ANSWER, shapes_sample, shapes_split_size
from .. import metrics
from .base import Benchmark, Loaded, Sample, percent


class Shapes(Benchmark):
    """The built-in synthetic `shapes` test split (sparsecut_core.data.shapes): exact match, overall and per kind."""

    name = "shapes"
    split = "test"
    image_size = 224  # px the scenes are drawn at; drawn_for() sets the model's own

    def drawn_for(self, processor):
        drawn = copy.copy(self)
        drawn.image_size = processor.full_view_size  # training draws the scenes at this size too
        return drawn

    def load(self, data=None, split=None, limit=None):
        count = shapes_split_size(split or self.split)
        samples = []
        for index in range(count if limit is None else min(limit, count)):
            drawn = shapes_sample(split or self.split, index, self.image_size)
            text = f"{drawn.question}\n{SHORT_ANSWER}"
            samples.append(Sample(drawn.id, text, text, drawn.image, drawn.answer, {"kind": drawn.kind}))
        return Loaded(samples, [])

    def metrics(self, samples, predictions):
        hits = [metrics.exact_match(p, s.target) for s, p in zip(samples, predictions)]
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for s, hit in zip(samples, hits):
            by_kind[s.meta["kind"]].append(hit)
        return {"accuracy": percent(hits), **{f"accuracy/{kind}": percent(by_kind[kind]) for kind in sorted(by_kind)}}
