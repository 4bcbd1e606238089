"""Benchmark readers: a benchmark's files -> `Sample`s (prompt, image, ground truth) -> scores.

One small class per benchmark family, registered by name in `BENCHMARKS`. Each reads
LLaVA-1.5's evaluation layout (its docs/Evaluation.md and scripts/v1_5/eval/*.sh: one
folder per benchmark holding the question file, the image folder and the annotation
files) or, where the benchmark is published as a Hugging Face dataset (lmms-lab's),
that dataset from disk (`save_to_disk` folder or the repository's parquet files).
Scores come from the per-family functions of metrics.py, in percent.

LLaVA's question files already carry the answer-format instruction in their `text`;
the instruction is appended only where it is missing (and always for Hugging Face rows).
A `Sample.prompt` is what LLaVA's answer files record as "prompt" (the question text,
without the image placeholder except for ScienceQA), so answers are matched to
questions on (question_id, prompt) just as LLaVA's own scorers match them.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import metrics
from .shapes import SHORT_ANSWER, UNANSWERABLE_HINT, shapes_sample, shapes_split_size

LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
LETTER_ANSWER_CN = "请直接回答选项字母。"  # LLaVA's model_vqa_mmbench.py with --lang cn
CIRCULAR_ID_STEP = 1_000_000  # VLMEvalKit: rotation r of MMBench question i has index i + r * 1e6

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


# --------------------------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------------------------


def _need_dir(name: str, data: Path | None) -> Path:
    if data is None:
        raise ValueError(f"benchmark {name}: give --data (its folder in LLaVA's layout, or a Hugging Face dataset)")
    data = Path(data)
    if not data.exists():
        raise ValueError(f"benchmark {name}: data {data} does not exist")
    return data


def _find(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first candidate (a relative path or a glob pattern) that exists under `root`."""
    for candidate in candidates:
        matches = sorted(root.glob(candidate)) if any(c in candidate for c in "*?[") else [root / candidate]
        for path in matches:
            if path.exists():
                return path
    return None


def _question_file(data: Path, candidates: Sequence[str]) -> Path | None:
    """`data` itself when it is a file, else the first candidate question file inside it."""
    return data if data.is_file() else _find(data, candidates)


def _image_dir(root: Path, candidates: Sequence[str]) -> Path:
    found = _find(root, candidates)
    return found if found is not None and found.is_dir() else root


def read_jsonl(path: Path, required: Sequence[str] = ()) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, object) for every readable line; one message per unreadable line."""
    rows, bad = [], []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(f"{path}: line {number}: not valid JSON ({err.msg})")
                continue
            missing = [name for name in required if not isinstance(row, dict) or name not in row]
            if missing:
                bad.append(f"{path}: line {number}: missing field {missing[0]!r}")
                continue
            rows.append((number, row))
    return rows, bad


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def _with_instructions(text: str, *instructions: str) -> str:
    """`text` ending with the instructions, one per line (LLaVA's files already end with them)."""
    if text.rstrip().endswith(instructions[-1]):
        return text
    return "\n".join([text, *instructions])


def _file_image(image_dir: Path, name: str, where: str) -> tuple[Path, str | None]:
    path = image_dir / name
    return path, (None if path.is_file() else f"{where}: image {path} not found")


def _pct(values: Sequence[float]) -> float:
    return 100.0 * sum(values) / len(values)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets on disk
# --------------------------------------------------------------------------------------------


def is_hf_dataset(data: Path) -> bool:
    """A `save_to_disk` folder, or a folder of parquet files (a dataset repository's snapshot)."""
    if not data.is_dir():
        return False
    saved = any((data / name).is_file() for name in ("dataset_dict.json", "state.json"))
    return saved or next(data.rglob("*.parquet"), None) is not None


def load_hf_split(data: Path, split: str | None, preferred: Sequence[str]):
    """One split of a dataset on disk: `split` if given, else the first of `preferred` present, else the only one."""
    import datasets

    if any((data / name).is_file() for name in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(data))
        if isinstance(loaded, datasets.Dataset):
            return loaded
        splits = {name: (lambda name=name: loaded[name]) for name in loaded}
    else:
        files: dict[str, list[str]] = defaultdict(list)
        for path in sorted(data.rglob("*.parquet")):
            files[path.name.split("-")[0].split(".")[0]].append(str(path))  # hub names: <split>-00000-of-00001
        splits = {name: (lambda paths=paths: datasets.Dataset.from_parquet(paths)) for name, paths in files.items()}
    if split is not None:
        if split not in splits:
            raise ValueError(f"{data}: no split {split!r}; it has {', '.join(sorted(splits))}")
        return splits[split]()
    for name in [*preferred, *(sorted(splits) if len(splits) == 1 else [])]:
        if name in splits:
            return splits[name]()
    raise ValueError(f"{data}: several splits ({', '.join(sorted(splits))}); choose one with --split")


def _hf_rows(dataset, image_columns: Sequence[str] = ("image",)):
    """(index, row without its image columns) for every row, decoding no image."""
    text_only = dataset.remove_columns([c for c in image_columns if c in dataset.column_names])
    return enumerate(text_only)


def _hf_image(dataset, index: int, column: str = "image") -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        value = dataset[index][column]
        return value[0] if isinstance(value, list) else value  # SEED's column is a list of images

    return load


def _hf_sample(question_id: Any, text: str, image: ImageRef, target: Any, meta: dict | None = None) -> Sample:
    """A sample of a Hugging Face row: its prompt is the full text, as in LLaVA's question files."""
    return Sample(question_id, text, text, image, target, meta or {})


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


class Benchmark:
    """A benchmark family: reads its samples and scores answers the way its official script does."""

    name: str = ""
    headline: str = "accuracy"  # the metric the paper reports
    hf_splits: tuple[str, ...] = ()  # preferred Hugging Face splits, in order

    def load(self, data: Path | None, split: str | None = None, limit: int | None = None) -> Loaded:
        """Every sample of the benchmark (`limit` only lets a reader stop early; the caller applies it)."""
        raise NotImplementedError

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
        data = _need_dir(self.name, data)
        questions = _question_file(data, self.question_files)
        if questions is None:
            if is_hf_dataset(data):
                return Loaded(self.from_hf(load_hf_split(data, split, self.hf_splits), data), [])
            raise ValueError(f"{data}: no {self.question_files[0]} (LLaVA's layout) and no Hugging Face dataset")
        rows, bad = read_jsonl(questions, ("question_id", "image", "text"))
        truth = self.annotations(questions.parent)
        rows = [(n, row) for n, row in rows if self.keep(row, truth)]
        targets = self.targets([row for _, row in rows], truth)
        image_dir = _image_dir(questions.parent, self.image_dirs)
        samples = []
        for (number, row), target in zip(rows, targets):
            image, problem = _file_image(image_dir, row["image"], f"{questions}: line {number}")
            meta = {"image": row["image"], **({"category": row["category"]} if "category" in row else {})}
            samples.append(Sample(row["question_id"], _with_instructions(row["text"], *self.instructions),
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
        return {"accuracy": _pct([metrics.vqa_accuracy(p, s.target) for s, p in zip(samples, predictions)])}


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
        path = _find(root, ("v2_mscoco_val2014_annotations.json",))
        return None if path is None else {
            str(a["question_id"]): _answer_texts(a["answers"]) for a in read_json(path)["annotations"]}

    def targets(self, rows, truth):
        return [(truth or {}).get(str(row["question_id"])) for row in rows]

    def from_hf(self, dataset, data):
        return [_hf_sample(row["question_id"], f"{row['question']}\n{SHORT_ANSWER}", _hf_image(dataset, i),
                           _answer_texts(row.get("answers"))) for i, row in _hf_rows(dataset)]

    def submission(self, samples, predictions, data):
        # EvalAI wants every test2015 question: unanswered ones get "" (LLaVA's convert_vqav2_for_submission.py)
        answered = {str(s.question_id): metrics.normalize_answer(p) for s, p in zip(samples, predictions)}
        full = _find(data, ("llava_vqav2_mscoco_test2015.jsonl",)) if data is not None and data.is_dir() else None
        ids = [row["question_id"] for _, row in read_jsonl(full, ("question_id",))[0]] if full else \
            [s.question_id for s in samples]
        return "vqav2_submission.json", [{"question_id": q, "answer": answered.get(str(q), "")} for q in ids]


class GQA(LlavaQuestions):
    name = "gqa"
    question_files = ("llava_gqa_testdev_balanced.jsonl",)
    image_dirs = ("data/images", "images")
    hf_splits = ("testdev",)

    def annotations(self, root):
        path = _find(root, ("data/testdev_balanced_questions.json", "testdev_balanced_questions.json"))
        return None if path is None else {str(qid): q["answer"] for qid, q in read_json(path).items()}

    def targets(self, rows, truth):
        return [(truth or {}).get(str(row["question_id"])) for row in rows]

    def load(self, data, split=None, limit=None):
        data = _need_dir(self.name, data)
        parts = [_find(data, (f"*{part}*",)) for part in ("instructions", "images")]
        if _question_file(data, self.question_files) is None and all(p is not None and p.is_dir() for p in parts):
            return Loaded(self.from_hf_parts(*parts, split), [])  # lmms-lab/GQA: two configs, joined on imageId
        return super().load(data, split, limit)

    def from_hf_parts(self, instructions: Path, images: Path, split: str | None) -> list[Sample]:
        questions = load_hf_split(instructions, split, self.hf_splits)
        pictures = load_hf_split(images, split, self.hf_splits)
        where = {row["id"]: i for i, row in _hf_rows(pictures)}
        return [_hf_sample(row["id"], f"{row['question']}\n{SHORT_ANSWER}", _hf_image(pictures, where[row["imageId"]]),
                           row["answer"]) for _, row in _hf_rows(questions) if row["imageId"] in where]

    def metrics(self, samples, predictions):
        return {"accuracy": _pct([metrics.gqa_match(p, s.target) for s, p in zip(samples, predictions)])}


class VizWiz(LlavaQuestions):
    """VizWiz-VQA: LLaVA runs test (answers go to the EvalAI server); val.json scores val questions."""

    name = "vizwiz"
    question_files = ("llava_test.jsonl", "llava_*.jsonl")
    image_dirs = ("test", "val")
    instructions = (UNANSWERABLE_HINT, SHORT_ANSWER)
    hf_splits = ("val", "validation")

    def annotations(self, root):
        path = _find(root, ("val.json",))
        return None if path is None else {a["image"]: _answer_texts(a.get("answers")) for a in read_json(path)}

    def targets(self, rows, truth):
        return [(truth or {}).get(row["image"]) for row in rows]

    def from_hf(self, dataset, data):
        text = "\n".join(["{}", UNANSWERABLE_HINT, SHORT_ANSWER])
        return [_hf_sample(row["question_id"], text.format(row["question"]), _hf_image(dataset, i),
                           _answer_texts(row.get("answers"))) for i, row in _hf_rows(dataset)]

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
        path = _find(root, ("TextVQA_0.5.1_val.json",))
        return None if path is None else {
            (str(a["image_id"]), a["question"].lower()): a["answers"] for a in read_json(path)["data"]}

    def targets(self, rows, truth):
        return [(truth or {}).get((str(row["question_id"]), textvqa_question(row["text"]))) for row in rows]

    def from_hf(self, dataset, data):
        samples = []
        for i, row in _hf_rows(dataset):
            tokens = row.get("ocr_tokens") or []
            ocr = [f"Reference OCR token: {', '.join(tokens)}"] if tokens else []
            text = "\n".join([row["question"], *ocr, SHORT_ANSWER])
            answers = _answer_texts(row.get("answers"))
            samples.append(_hf_sample(row["question_id"], text, _hf_image(dataset, i), answers))
        return samples


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
            path = _find(root, (f"coco/coco_pope_{category}.json", f"coco_pope_{category}.json"))
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
        return [_hf_sample(row["question_id"], f"{row['question']}\n{SHORT_ANSWER}", _hf_image(dataset, i),
                           row["answer"], {"category": row["category"]}) for i, row in _hf_rows(dataset)]

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


class SEED(LlavaQuestions):
    """SEED-Bench, image questions only (SEED-IMG); answers are letters compared as LLaVA does."""

    name = "seed"
    question_files = ("llava-seed-bench.jsonl",)
    image_dirs = (".",)  # LLaVA's `image` fields are relative to the seed_bench folder
    instructions = (LETTER_ANSWER,)
    hf_splits = ("test",)

    def annotations(self, root):
        path = _find(root, ("SEED-Bench.json",))
        return None if path is None else {str(q["question_id"]): q for q in read_json(path)["questions"]}

    def keep(self, row, truth):
        entry = (truth or {}).get(str(row["question_id"]))
        return entry["data_type"] == "image" if entry else str(row["image"]).startswith("SEED-Bench-image")

    def targets(self, rows, truth):
        entries = [(truth or {}).get(str(row["question_id"])) for row in rows]
        return [None if entry is None else _seed_target(entry) for entry in entries]

    def from_hf(self, dataset, data):
        samples = []
        for i, row in _hf_rows(dataset):
            if row.get("data_type", "image") != "image":
                continue
            target = _seed_target(row)
            lines = [row["question"], *(f"{k}. {v}" for k, v in target["options"].items())]
            text = "\n".join([*lines, LETTER_ANSWER])
            samples.append(_hf_sample(row["question_id"], text, _hf_image(dataset, i), target))
        return samples

    def metrics(self, samples, predictions):
        hits = [metrics.seed_choice(p, s.target["options"]) == s.target["answer"] for s, p in zip(samples, predictions)]
        return {"accuracy": _pct(hits)}


def _seed_target(entry: dict) -> dict:
    return {"answer": entry["answer"], "options": {k.upper(): entry[f"choice_{k}"] for k in "abcd"}}


class ScienceQA(Benchmark):
    """ScienceQA test (LLaVA's llava_test_CQM-A.json; -I holds the image questions) scored on problems.json.

    `img_accuracy` (questions with an image) is the paper's ScienceQA-IMG.
    """

    name = "scienceqa"
    headline = "img_accuracy"
    question_files = ("llava_test_CQM-A.json", "llava_test_CQM-I.json", "llava_test_*.json")
    hf_splits = ("test",)

    def load(self, data, split=None, limit=None):
        data = _need_dir(self.name, data)
        questions = _question_file(data, self.question_files)
        if questions is None:
            if is_hf_dataset(data):
                return Loaded(self.from_hf(load_hf_split(data, split, self.hf_splits)), [])
            raise ValueError(f"{data}: no {self.question_files[0]} (LLaVA's layout) and no Hugging Face dataset")
        root = questions.parent
        entries = read_json(questions)
        if not isinstance(entries, list):
            raise ValueError(f"{questions}: expected a JSON list of questions")
        problems_file = _find(root, ("problems.json",))
        problems = read_json(problems_file) if problems_file is not None else {}
        image_dir = _image_dir(root, ("images/test", "images"))
        samples, bad = [], []
        for k, entry in enumerate(entries):
            where = f"{questions}: question {k + 1}"
            try:
                pid, human = str(entry["id"]), entry["conversations"][0]["value"]
            except (KeyError, IndexError, TypeError):
                bad.append(f"{where}: expected id and conversations[0].value")
                continue
            question = human.replace("<image>", "").strip()
            image, problem = _file_image(image_dir, entry["image"], where) if "image" in entry else (None, None)
            prompt = ("<image>\n" if image is not None else "") + f"{question}\n{LETTER_ANSWER}"
            target = _sqa_target(problems[pid]) if pid in problems else None
            samples.append(Sample(pid, f"{question}\n{LETTER_ANSWER}", prompt, image, target, {}, problem))
        return Loaded(samples, bad)

    def from_hf(self, dataset) -> list[Sample]:
        samples = []
        # which rows have an image, read from the arrow column without decoding any
        nulls = dataset.data.column("image").is_null().to_pylist() if "image" in dataset.column_names \
            else [True] * len(dataset)
        for i, row in _hf_rows(dataset):
            # LLaVA's CQM format (scripts/convert_sqa_to_llava_base_prompt.py)
            choices = " ".join(f"({'ABCDE'[k]}) {c}" for k, c in enumerate(row["choices"]))
            question = f"Context: {row.get('hint') or 'N/A'}\nQuestion: {row['question']}\nOptions: {choices}"
            question = question.replace("  ", " ").strip()
            image = None if nulls[i] else _hf_image(dataset, i)
            prompt = ("<image>\n" if image is not None else "") + f"{question}\n{LETTER_ANSWER}"
            samples.append(Sample(i, f"{question}\n{LETTER_ANSWER}", prompt, image, _sqa_target(row)))
        return samples

    def metrics(self, samples, predictions):
        hits = [metrics.parse_choice(p, s.target["options"]) == s.target["answer"]
                for s, p in zip(samples, predictions)]
        with_image = [h for h, s in zip(hits, samples) if s.image is not None]
        return {"accuracy": _pct(hits), **({"img_accuracy": _pct(with_image)} if with_image else {})}


def _sqa_target(problem: dict) -> dict:
    return {"answer": "ABCDE"[problem["answer"]], "options": list(problem["choices"])}


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

        data = _need_dir(self.name, data)
        path = _question_file(data, self.question_files)
        if path is not None:
            records = pd.read_table(path).to_dict("records")  # as LLaVA reads it (same NaN and number parsing)
            images = [lambda b64=r["image"]: Image.open(io.BytesIO(base64.b64decode(b64))) for r in records]
        elif is_hf_dataset(data):
            dataset = load_hf_split(data, split, self.hf_splits)
            records = [row for _, row in _hf_rows(dataset)]
            images = [_hf_image(dataset, i) for i in range(len(records))]
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
        return {"accuracy": _pct(circular), **({"vanilla_accuracy": _pct(first)} if first else {})}


class MMBenchCN(MMBench):
    name = "mmbench_cn"
    question_files = ("mmbench_dev_cn_20231003.tsv", "mmbench_dev_cn*.tsv", "MMBench_DEV_CN*.tsv")
    instruction = LETTER_ANSWER_CN


class Shapes(Benchmark):
    """The built-in synthetic `shapes` test split (sparsecut_core.shapes): exact match, overall and per kind."""

    name = "shapes"
    split = "test"

    def load(self, data=None, split=None, limit=None):
        count = shapes_split_size(split or self.split)
        samples = []
        for index in range(count if limit is None else min(limit, count)):
            drawn = shapes_sample(split or self.split, index)
            text = f"{drawn.question}\n{SHORT_ANSWER}"
            samples.append(Sample(drawn.id, text, text, drawn.image, drawn.answer, {"kind": drawn.kind}))
        return Loaded(samples, [])

    def metrics(self, samples, predictions):
        hits = [metrics.exact_match(p, s.target) for s, p in zip(samples, predictions)]
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for s, hit in zip(samples, hits):
            by_kind[s.meta["kind"]].append(hit)
        return {"accuracy": _pct(hits), **{f"accuracy/{kind}": _pct(by_kind[kind]) for kind in sorted(by_kind)}}


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (VQAv2(), GQA(), VizWiz(), ScienceQA(), TextVQA(), POPE(), MMBench(), MMBenchCN(), SEED(),
                        Shapes())
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Benchmark", "Loaded", "Sample", "get_benchmark", "read_jsonl"]
