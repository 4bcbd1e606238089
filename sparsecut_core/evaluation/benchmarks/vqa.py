"""Short-answer VQA benchmarks read from LLaVA's question files: VQAv2, GQA, VizWiz, TextVQA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...data.shapes import SHORT_ANSWER, UNANSWERABLE_HINT
from .. import metrics
from .base import LlavaQuestions, Loaded, Sample, hf_sample, percent
from .reading import find_first, hf_image, hf_rows, load_hf_split, need_dir, question_file, read_json, read_jsonl


def _answer_texts(answers: Any) -> list[str] | None:
    """VQA answers as strings: from [{"answer": ...}, ...] or [str, ...]; None when there are none."""
    if not answers:
        return None
    return [a["answer"] if isinstance(a, dict) else str(a) for a in answers]


class VQAv2(LlavaQuestions):
    """VQAv2 test-dev as LLaVA runs it (answers go to the EvalAI server); val with its annotations."""

    name = "vqav2"
    question_files = ("llava_vqav2_mscoco_test-dev2015.jsonl", "llava_vqav2_*.jsonl")
    image_dirs = ("test2015", "val2014")
    hf_splits = ("testdev", "validation")

    def annotations(self, root):
        path = find_first(root, ("v2_mscoco_val2014_annotations.json",))
        return None if path is None else {
            str(a["question_id"]): _answer_texts(a["answers"]) for a in read_json(path)["annotations"]}

    def targets(self, rows, truth):
        return [(truth or {}).get(str(row["question_id"])) for row in rows]

    def from_hf(self, dataset, data):
        return [hf_sample(row["question_id"], f"{row['question']}\n{SHORT_ANSWER}", hf_image(dataset, i),
                           _answer_texts(row.get("answers"))) for i, row in hf_rows(dataset)]

    def submission(self, samples, predictions, data):
        # EvalAI wants every test2015 question: unanswered ones get "" (LLaVA's convert_vqav2_for_submission.py)
        answered = {str(s.question_id): metrics.normalize_answer(p) for s, p in zip(samples, predictions)}
        full = find_first(data, ("llava_vqav2_mscoco_test2015.jsonl",)) if data is not None and data.is_dir() else None
        ids = [row["question_id"] for _, row in read_jsonl(full, ("question_id",))[0]] if full else \
            [s.question_id for s in samples]
        return "vqav2_submission.json", [{"question_id": q, "answer": answered.get(str(q), "")} for q in ids]


class GQA(LlavaQuestions):
    name = "gqa"
    question_files = ("llava_gqa_testdev_balanced.jsonl",)
    image_dirs = ("data/images", "images")
    hf_splits = ("testdev",)

    def annotations(self, root):
        path = find_first(root, ("data/testdev_balanced_questions.json", "testdev_balanced_questions.json"))
        return None if path is None else {str(qid): q["answer"] for qid, q in read_json(path).items()}

    def targets(self, rows, truth):
        return [(truth or {}).get(str(row["question_id"])) for row in rows]

    def load(self, data, split=None, limit=None):
        data = need_dir(self.name, data)
        parts = [find_first(data, (f"*{part}*",)) for part in ("instructions", "images")]
        if question_file(data, self.question_files) is None and all(p is not None and p.is_dir() for p in parts):
            return Loaded(self.from_hf_parts(*parts, split), [])  # lmms-lab/GQA: two configs, joined on imageId
        return super().load(data, split, limit)

    def from_hf_parts(self, instructions: Path, images: Path, split: str | None) -> list[Sample]:
        questions = load_hf_split(instructions, split, self.hf_splits)
        pictures = load_hf_split(images, split, self.hf_splits)
        where = {row["id"]: i for i, row in hf_rows(pictures)}
        return [hf_sample(row["id"], f"{row['question']}\n{SHORT_ANSWER}", hf_image(pictures, where[row["imageId"]]),
                           row["answer"]) for _, row in hf_rows(questions) if row["imageId"] in where]

    def metrics(self, samples, predictions):
        return {"accuracy": percent([metrics.gqa_match(p, s.target) for s, p in zip(samples, predictions)])}


class VizWiz(LlavaQuestions):
    """VizWiz-VQA: LLaVA runs test (answers go to the EvalAI server); val.json scores val questions."""

    name = "vizwiz"
    question_files = ("llava_test.jsonl", "llava_*.jsonl")
    image_dirs = ("test", "val")
    instructions = (UNANSWERABLE_HINT, SHORT_ANSWER)
    hf_splits = ("val", "validation")

    def annotations(self, root):
        path = find_first(root, ("val.json",))
        return None if path is None else {a["image"]: _answer_texts(a.get("answers")) for a in read_json(path)}

    def targets(self, rows, truth):
        return [(truth or {}).get(row["image"]) for row in rows]

    def from_hf(self, dataset, data):
        text = "\n".join(["{}", UNANSWERABLE_HINT, SHORT_ANSWER])
        return [hf_sample(row["question_id"], text.format(row["question"]), hf_image(dataset, i),
                           _answer_texts(row.get("answers"))) for i, row in hf_rows(dataset)]

    def submission(self, samples, predictions, data):
        # LLaVA's convert_vizwiz_for_submission.py: one {image, answer} per question
        if not all("image" in s.meta for s in samples):
            return None
        return "vizwiz_submission.json", [{"image": s.meta["image"], "answer": metrics.normalize_answer(p)}
                                          for s, p in zip(samples, predictions)]


def textvqa_question(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt (eval_textvqa.py's `prompt_processor`), lowercased."""
    lines = [line for line in prompt.split("\n")
             if not line.startswith("Reference OCR token:") and line != SHORT_ANSWER]
    return (lines[0] if lines else prompt).lower()


class TextVQA(LlavaQuestions):
    """TextVQA val with LLaVA's OCR-token prompt; the question_id of LLaVA's file is the image id."""

    name = "textvqa"
    question_files = ("llava_textvqa_val_v051_ocr.jsonl", "llava_textvqa_*.jsonl")
    image_dirs = ("train_images",)
    hf_splits = ("validation",)

    def annotations(self, root):
        path = find_first(root, ("TextVQA_0.5.1_val.json",))
        return None if path is None else {
            (str(a["image_id"]), a["question"].lower()): a["answers"] for a in read_json(path)["data"]}

    def targets(self, rows, truth):
        return [(truth or {}).get((str(row["question_id"]), textvqa_question(row["text"]))) for row in rows]

    def from_hf(self, dataset, data):
        samples = []
        for i, row in hf_rows(dataset):
            tokens = row.get("ocr_tokens") or []
            ocr = [f"Reference OCR token: {', '.join(tokens)}"] if tokens else []
            text = "\n".join([row["question"], *ocr, SHORT_ANSWER])
            answers = _answer_texts(row.get("answers"))
            samples.append(hf_sample(row["question_id"], text, hf_image(dataset, i), answers))
        return samples
