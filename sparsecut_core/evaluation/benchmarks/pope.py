"""POPE: object-hallucination yes/no questions on COCO, three negative-sampling settings."""

from __future__ import annotations

from collections import defaultdict

from ...data.shapes import SHORT_ANSWER
from .. import metrics
from .base import LlavaQuestions, hf_sample
from .reading import find_first, hf_image, hf_rows, read_jsonl


class POPE(LlavaQuestions):
    """POPE on COCO, its three negative-sampling settings scored apart (LLaVA's eval_pope.py).

    The labels are the `coco/coco_pope_<category>.json` files, read in order against the
    questions of that category, as eval_pope.py pairs them.
    """

    name = "pope"
    headline = "f1"
    question_files = ("llava_pope_test.jsonl",)
    image_dirs = ("val2014",)
    categories = ("adversarial", "popular", "random")
    hf_splits = ("test",)

    def annotations(self, root):
        labels: dict[str, list[dict]] = {}
        for category in self.categories:
            path = find_first(root, (f"coco/coco_pope_{category}.json", f"coco_pope_{category}.json"))
            if path is not None:
                lines, bad = read_jsonl(path, ("label", "image"))
                if bad:
                    raise ValueError(bad[0])
                labels[category] = [row for _, row in lines]
        return labels

    def targets(self, rows, labels):
        position: dict[str, int] = defaultdict(int)
        targets = []
        for row in rows:
            category = row.get("category")
            k, position[category] = position[category], position[category] + 1
            if category not in labels:
                targets.append(None)
                continue
            if k >= len(labels[category]) or labels[category][k]["image"] != row["image"]:
                raise ValueError(f"{self.name}: question {row['question_id']} ({category}) does not line up with "
                                 f"coco_pope_{category}.json line {k + 1}: are they from the same POPE release?")
            targets.append(labels[category][k]["label"])
        return targets

    def from_hf(self, dataset, data):
        return [hf_sample(row["question_id"], f"{row['question']}\n{SHORT_ANSWER}", hf_image(dataset, i),
                           row["answer"], {"category": row["category"]}) for i, row in hf_rows(dataset)]

    def metrics(self, samples, predictions):
        by_category: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for s, p in zip(samples, predictions):
            by_category[s.meta.get("category", "all")][0].append(p)
            by_category[s.meta.get("category", "all")][1].append(s.target)
        out: dict[str, float] = {}
        for category in sorted(by_category):
            for metric, value in metrics.pope_scores(*by_category[category]).items():
                out[f"{category}/{metric}"] = 100.0 * value
        # the paper's POPE number: the mean over the three settings
        for metric in ("f1", "accuracy"):
            out[metric] = sum(out[f"{c}/{metric}"] for c in by_category) / len(by_category)
        return out
