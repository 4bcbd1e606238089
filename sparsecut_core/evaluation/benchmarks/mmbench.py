"""MMBench dev (English and Chinese), circular evaluation over the rotations of the options."""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from typing import Any

from PIL import Image

from .. import metrics
from .base import LETTER_ANSWER, Benchmark, ImageRef, Loaded, Sample, percent
from .reading import hf_image, hf_rows, is_hf_dataset, load_hf_split, need_dir, question_file


LETTER_ANSWER_CN = "请直接回答选项字母。"  # LLaVA's model_vqa_mmbench.py with --lang cn


CIRCULAR_ID_STEP = 1_000_000  # VLMEvalKit: rotation r of MMBench question i has index i + r * 1e6


def _is_none(value: Any) -> bool:
    """LLaVA's model_vqa_mmbench.py `is_none`: None, NaN, "nan" and "none" mean no option."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


class MMBench(Benchmark):
    """MMBench dev (English), circular: a question counts only if every rotation of its options is right.

    LLaVA's mmbench_dev_20230712.tsv already holds the rotations as rows with index
    i + r * 1e6 (VLMEvalKit's circular copies); files without them are rotated here,
    giving the rotations the same ids.
    """

    name = "mmbench"
    question_files = ("mmbench_dev_20230712.tsv", "mmbench_dev_en*.tsv", "MMBench_DEV_EN*.tsv")
    instruction = LETTER_ANSWER
    hf_splits = ("dev",)

    def load(self, data, split=None, limit=None):
        import pandas as pd

        data = need_dir(self.name, data)
        path = question_file(data, self.question_files)
        if path is not None:
            records = pd.read_table(path).to_dict("records")  # as LLaVA reads it (same NaN and number parsing)
            images = [lambda b64=r["image"]: Image.open(io.BytesIO(base64.b64decode(b64))) for r in records]
        elif is_hf_dataset(data):
            dataset = load_hf_split(data, split, self.hf_splits)
            records = [row for _, row in hf_rows(dataset)]
            images = [hf_image(dataset, i) for i in range(len(records))]
        else:
            raise ValueError(f"{data}: no {self.question_files[0]} (LLaVA's layout) and no Hugging Face dataset")
        return Loaded(self.rotations(records, images), [])

    def rotations(self, records: list[dict], images: list[ImageRef]) -> list[Sample]:
        """Every rotation of every question: the file's own rows if it holds them, else made here."""
        in_file = any(int(r["index"]) >= CIRCULAR_ID_STEP for r in records)
        samples = []
        for row, image in zip(records, images):
            index = int(row["index"])
            options = []
            for letter in "ABCD":  # LLaVA's get_options: options up to the first missing one
                if letter not in row or _is_none(row[letter]):
                    break
                options.append(str(row[letter]))
            answer = None if _is_none(row.get("answer")) else str(row["answer"])
            for r in [index // CIRCULAR_ID_STEP] if in_file else range(len(options)):
                shown = options if in_file else options[r:] + options[:r]
                truth = answer if in_file or answer is None else "ABCD"[("ABCD".index(answer) - r) % len(options)]
                prompt = self.prompt(row, shown)
                category = None if _is_none(row.get("category")) else str(row["category"])
                meta = {"group": index % CIRCULAR_ID_STEP, "round_id": r, "category": category}
                target = None if truth is None else {"answer": truth, "options": dict(zip("ABCD", shown))}
                qid = index if in_file else index + r * CIRCULAR_ID_STEP
                samples.append(Sample(qid, f"{prompt}\n{self.instruction}", prompt, image, target, meta))
        return samples

    @staticmethod
    def prompt(row: dict, options: list[str]) -> str:
        """LLaVA's MMBench question: hint, question, then "A. option" lines."""
        hint = row.get("hint")
        question = str(row["question"]) if _is_none(hint) else f"{hint}\n{row['question']}"
        return "\n".join([question, *(f"{letter}. {option}" for letter, option in zip("ABCD", options))])

    def metrics(self, samples, predictions):
        groups: dict[int, list[tuple[str | None, str]]] = defaultdict(list)
        first = []
        for s, p in sorted(zip(samples, predictions), key=lambda sp: sp[0].meta["round_id"]):
            choice = metrics.mmbench_choice(p, s.target["options"])
            groups[s.meta["group"]].append((choice, s.target["answer"]))
            if s.meta["round_id"] == 0:
                first.append(choice == s.target["answer"])
        circular = [metrics.mmbench_circular_correct([c for c, _ in g], [a for _, a in g]) for g in groups.values()]
        return {"accuracy": percent(circular), **({"vanilla_accuracy": percent(first)} if first else {})}


class MMBenchCN(MMBench):
    name = "mmbench_cn"
    question_files = ("mmbench_dev_cn_20231003.tsv", "mmbench_dev_cn*.tsv", "MMBench_DEV_CN*.tsv")
    instruction = LETTER_ANSWER_CN
