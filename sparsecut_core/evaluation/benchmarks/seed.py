"""SEED-Bench image questions (SEED-IMG): multiple choice answered with a letter."""

from __future__ import annotations

from .. import metrics
from .base import LETTER_ANSWER, LlavaQuestions, hf_sample, percent
from .reading import find_first, hf_image, hf_rows, read_json


class SEED(LlavaQuestions):
    """SEED-Bench, image questions only (SEED-IMG); answers are letters compared as LLaVA does."""

    name = "seed"
    question_files = ("llava-seed-bench.jsonl",)
    image_dirs = (".",)  # LLaVA's `image` fields are relative to the seed_bench folder
    instructions = (LETTER_ANSWER,)
    hf_splits = ("test",)

    def annotations(self, root):
        path = find_first(root, ("SEED-Bench.json",))
        return None if path is None else {str(q["question_id"]): q for q in read_json(path)["questions"]}

    def keep(self, row, truth):
        entry = (truth or {}).get(str(row["question_id"]))
        return entry["data_type"] == "image" if entry else str(row["image"]).startswith("SEED-Bench-image")

    def targets(self, rows, truth):
        entries = [(truth or {}).get(str(row["question_id"])) for row in rows]
        return [None if entry is None else _seed_target(entry) for entry in entries]

    def from_hf(self, dataset, data):
        samples = []
        for i, row in hf_rows(dataset):
            if row.get("data_type", "image") != "image":
                continue
            target = _seed_target(row)
            lines = [row["question"], *(f"{k}. {v}" for k, v in target["options"].items())]
            text = "\n".join([*lines, LETTER_ANSWER])
            samples.append(hf_sample(row["question_id"], text, hf_image(dataset, i), target))
        return samples

    def metrics(self, samples, predictions):
        hits = [metrics.seed_choice(p, s.target["options"]) == s.target["answer"] for s, p in zip(samples, predictions)]
        return {"accuracy": percent(hits)}


def _seed_target(entry: dict) -> dict:
    return {"answer": entry["answer"], "options": {k.upper(): entry[f"choice_{k}"] for k in "abcd"}}
