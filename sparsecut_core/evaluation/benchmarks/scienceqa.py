"""ScienceQA test in LLaVA's CQM-A format, scored on problems.json (IMG: the questions with an image)."""

from __future__ import annotations

from .. import metrics
from .base import LETTER_ANSWER, Benchmark, Loaded, Sample, percent
from .reading import file_image, find_first, hf_image, hf_rows, image_folder, is_hf_dataset, load_hf_split, \
    need_dir, question_file, read_json


class ScienceQA(Benchmark):
    """ScienceQA test (LLaVA's llava_test_CQM-A.json; -I holds the image questions) scored on problems.json.

    `img_accuracy` (questions with an image) is the paper's ScienceQA-IMG.
    """

    name = "scienceqa"
    headline = "img_accuracy"
    question_files = ("llava_test_CQM-A.json", "llava_test_CQM-I.json", "llava_test_*.json")
    hf_splits = ("test",)

    def load(self, data, split=None, limit=None):
        data = need_dir(self.name, data)
        questions = question_file(data, self.question_files)
        if questions is None:
            if is_hf_dataset(data):
                return Loaded(self.from_hf(load_hf_split(data, split, self.hf_splits)), [])
            raise ValueError(f"{data}: no {self.question_files[0]} (LLaVA's layout) and no Hugging Face dataset")
        root = questions.parent
        entries = read_json(questions)
        if not isinstance(entries, list):
            raise ValueError(f"{questions}: expected a JSON list of questions")
        problems_file = find_first(root, ("problems.json",))
        problems = read_json(problems_file) if problems_file is not None else {}
        image_dir = image_folder(root, ("images/test", "images"))
        samples, bad = [], []
        for k, entry in enumerate(entries):
            where = f"{questions}: question {k + 1}"
            try:
                pid, human = str(entry["id"]), entry["conversations"][0]["value"]
            except (KeyError, IndexError, TypeError):
                bad.append(f"{where}: expected id and conversations[0].value")
                continue
            question = human.replace("<image>", "").strip()
            image, problem = file_image(image_dir, entry["image"], where) if "image" in entry else (None, None)
            prompt = ("<image>\n" if image is not None else "") + f"{question}\n{LETTER_ANSWER}"
            target = _sqa_target(problems[pid]) if pid in problems else None
            samples.append(Sample(pid, f"{question}\n{LETTER_ANSWER}", prompt, image, target, {}, problem))
        return Loaded(samples, bad)

    def from_hf(self, dataset) -> list[Sample]:
        samples = []
        # which rows have an image, read from the arrow column without decoding any
        nulls = dataset.data.column("image").is_null().to_pylist() if "image" in dataset.column_names \
            else [True] * len(dataset)
        for i, row in hf_rows(dataset):
            # LLaVA's CQM format (scripts/convert_sqa_to_llava_base_prompt.py)
            choices = " ".join(f"({'ABCDE'[k]}) {c}" for k, c in enumerate(row["choices"]))
            question = f"Context: {row.get('hint') or 'N/A'}\nQuestion: {row['question']}\nOptions: {choices}"
            question = question.replace("  ", " ").strip()
            image = None if nulls[i] else hf_image(dataset, i)
            prompt = ("<image>\n" if image is not None else "") + f"{question}\n{LETTER_ANSWER}"
            samples.append(Sample(i, f"{question}\n{LETTER_ANSWER}", prompt, image, _sqa_target(row)))
        return samples

    def metrics(self, samples, predictions):
        hits = [metrics.parse_choice(p, s.target["options"]) == s.target["answer"]
                for s, p in zip(samples, predictions)]
        with_image = [h for h, s in zip(hits, samples) if s.image is not None]
        return {"accuracy": percent(hits), **({"img_accuracy": percent(with_image)} if with_image else {})}


def _sqa_target(problem: dict) -> dict:
    return {"answer": "ABCDE"[problem["answer"]], "options": list(problem["choices"])}
