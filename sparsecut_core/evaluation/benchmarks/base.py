"""Benchmark readers: a benchmark's files -> `Sample`s (prompt, image, ground truth) -> scores.

One small class per benchmark family (one module per family beside this one), registered by name in
`BENCHMARKS` (the package's __init__). Each reads
LLaVA-1.5's evaluation layout (its docs/Evaluation.md and scripts/v1_5/eval/*.sh: one
folder per benchmark holding the question file, the image folder and the annotation
files) or, where the benchmark is published as a Hugging Face dataset (lmms-lab's),
that dataset from disk (`save_to_disk` folder or the repository's parquet files).
Scores come from the per-family functions of metrics.py, in percent.

LLaVA's question files already carry the answer-format instruction in their `text`;
the instruction is appended only where it is missing (and always for Hugging Face rows).
A `Sample.prompt` is what LLaVA's answer files record as "prompt" (the question text,
without the image placeholder except for ScienceQA), so answers are matched to
questions on (question_id, prompt) just as LLaVA's own scorers match them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ...data.shapes import SHORT_ANSWER
from .. import metrics
from .reading import file_image, image_folder, is_hf_dataset, load_hf_split, need_dir, question_file, read_jsonl


LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


ImageRef = Path | Image.Image | Callable[[], Image.Image] | None  # a file, an image, or a loader


@dataclass(frozen=True)
class Sample:
    """One question to ask: `text` follows the image placeholder in the human turn."""

    question_id: Any  # as in the source (int or str); written back unchanged
    text: str  # question + answer-format instruction
    prompt: str  # what LLaVA's answer file records as "prompt" (answers are matched on it)
    image: ImageRef = None  # None: a text-only question
    target: Any = None  # ground truth in the form the benchmark's scorer takes; None: not available here
    meta: dict[str, Any] = field(default_factory=dict)  # category / group / round: copied to the answer
    problem: str | None = None  # why it cannot be asked (its image is missing), naming file and line


@dataclass(frozen=True)
class Loaded:
    samples: list[Sample]
    bad_records: list[str]  # records that could not be read, one message each (file and line)


def with_instructions(text: str, *instructions: str) -> str:
    """`text` ending with the instructions, one per line (LLaVA's files already end with them)."""
    if text.rstrip().endswith(instructions[-1]):
        return text
    return "\n".join([text, *instructions])


def percent(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values)


def hf_sample(question_id: Any, text: str, image: ImageRef, target: Any, meta: dict | None = None) -> Sample:
    """A sample of a Hugging Face row: its prompt is the full text, as in LLaVA's question files."""
    return Sample(question_id, text, text, image, target, meta or {})


class Benchmark:
    """A benchmark family: reads its samples and scores answers the way its official script does."""

    name: str = ""
    headline: str = "accuracy"  # the metric the paper reports
    hf_splits: tuple[str, ...] = ()  # preferred Hugging Face splits, in order

    def load(self, data: Path | None, split: str | None = None, limit: int | None = None) -> Loaded:
        """Every sample of the benchmark (`limit` only lets a reader stop early; the caller applies it)."""
        raise NotImplementedError

    def drawn_for(self, processor: Any) -> Benchmark:
        """This benchmark with the images it draws itself drawn at the size `processor`'s model looks at
        (the same pixels the model was trained on); benchmarks that read image files return themselves."""
        return self

    def metrics(self, samples: list[Sample], predictions: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def score(self, samples: list[Sample], predictions: list[str]) -> dict[str, float]:
        """Metrics over the samples that have ground truth here; only a count where none has."""
        pairs = [(s, p) for s, p in zip(samples, predictions) if s.target is not None]
        if not pairs:
            return {"answered": len(samples)}  # no local ground truth (e.g. a test split scored by a server)
        return {**self.metrics([s for s, _ in pairs], [p for _, p in pairs]), "n": len(pairs)}

    def submission(self, samples: list[Sample], predictions: list[str], data: Path | None) -> tuple[str, Any] | None:
        """(file name, JSON payload) for the benchmark's evaluation server, where one is needed."""
        return None


class LlavaQuestions(Benchmark):
    """A question .jsonl of LLaVA's `model_vqa_loader.py` ({question_id, image, text}) + an image folder."""

    question_files: tuple[str, ...] = ()
    image_dirs: tuple[str, ...] = ()
    instructions: tuple[str, ...] = (SHORT_ANSWER,)

    def load(self, data, split=None, limit=None):
        data = need_dir(self.name, data)
        questions = question_file(data, self.question_files)
        if questions is None:
            if is_hf_dataset(data):
                return Loaded(self.from_hf(load_hf_split(data, split, self.hf_splits), data), [])
            raise ValueError(f"{data}: no {self.question_files[0]} (LLaVA's layout) and no Hugging Face dataset")
        rows, bad = read_jsonl(questions, ("question_id", "image", "text"))
        truth = self.annotations(questions.parent)
        rows = [(n, row) for n, row in rows if self.keep(row, truth)]
        targets = self.targets([row for _, row in rows], truth)
        image_dir = image_folder(questions.parent, self.image_dirs)
        samples = []
        for (number, row), target in zip(rows, targets):
            image, problem = file_image(image_dir, row["image"], f"{questions}: line {number}")
            meta = {"image": row["image"], **({"category": row["category"]} if "category" in row else {})}
            samples.append(Sample(row["question_id"], with_instructions(row["text"], *self.instructions),
                                  row["text"], image, target, meta, problem))
        return Loaded(samples, bad)

    def annotations(self, root: Path) -> Any:
        """The ground truth files beside the questions, read once (None where there are none)."""
        return None

    def keep(self, row: dict, truth: Any) -> bool:
        return True

    def targets(self, rows: list[dict], truth: Any) -> list[Any]:
        """Ground truth per row (None where absent)."""
        return [None] * len(rows)

    def from_hf(self, dataset, data: Path) -> list[Sample]:
        raise ValueError(f"benchmark {self.name}: reading it from a Hugging Face dataset is not supported")

    def metrics(self, samples, predictions):
        return {"accuracy": percent([metrics.vqa_accuracy(p, s.target) for s, p in zip(samples, predictions)])}
