"""Answer files in LLaVA's format: batched greedy answers appended as they come, read back and matched.

Answers go to `<out>/<benchmark>/answers.jsonl` (question_id, prompt, text, answer_id,
model_id, metadata, and key: what determined the answer, keys.py), a batch at a time and
flushed, so a killed run keeps what it answered and a rerun asks only the rest."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.templates import Turn, render_prompt
from ..model.images import load_image
from .benchmarks.base import ImageRef, Sample
from .benchmarks.reading import read_jsonl


ANSWERS_FILE = "answers.jsonl"


Progress = Callable[[int, int], None]  # (answered so far, to answer in this run)


def read_answers(path: Path) -> tuple[list[dict], list[str]]:
    """The records of an answers file (LLaVA's format) and one message per unreadable line."""
    rows, bad = read_jsonl(path, ("question_id", "text"))
    records = []
    for number, row in rows:
        if isinstance(row["text"], str):
            records.append(row)
        else:
            bad.append(f"{path}: line {number}: field 'text' is not a string")
    return records, bad


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline: the write a killed run was in the middle of."""
    with open(path, "rb+") as file:
        size = file.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            chunk = file.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                file.truncate(start + newline + 1)
                return
            end = start
        file.truncate(0)


def keyed_answers(samples: list[Sample], keys: list[dict | None], answers: list[dict]) -> list[str | None]:
    """Each sample's answer text under its key (None if it has none): answers of other keys never count."""
    by_key = {}
    for record in answers:
        if isinstance(record.get("key"), dict):
            by_key[(str(record["question_id"]), record.get("prompt"), _canonical(record["key"]))] = record["text"]
    return [None if key is None else by_key.get((str(s.question_id), s.prompt, _canonical(key)))
            for s, key in zip(samples, keys)]


def latest_records(samples: list[Sample], answers: list[dict]) -> list[dict | None]:
    """Each sample's latest answer record matched on (question_id, prompt), whatever its key."""
    by_id = {(str(r["question_id"]), r.get("prompt")): r for r in answers}  # a later answer wins
    return [by_id.get((str(s.question_id), s.prompt)) for s in samples]


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def match_answers(samples: list[Sample], answers: list[dict], loose: bool = False) -> list[str | None]:
    """Each sample's answer text (None if unanswered), matched on (question_id, prompt) as LLaVA's scorers do.

    `loose` also matches on question_id alone where both the samples and the answers hold it
    once: for answer files whose prompts were written differently (another toolkit).
    """
    by_key, by_id = {}, defaultdict(list)
    for record in answers:
        qid = str(record["question_id"])
        by_key[(qid, record.get("prompt"))] = record["text"]  # a later answer to the same question wins
        by_id[qid].append(record["text"])
    ids = Counter(str(s.question_id) for s in samples)
    found = []
    for sample in samples:
        qid = str(sample.question_id)
        text = by_key.get((qid, sample.prompt))
        if text is None and loose and ids[qid] == 1 and len(by_id[qid]) == 1:
            text = by_id[qid][0]
        found.append(text)
    return found


def first_model_id(answers_path: Path) -> str | None:
    with open(answers_path, encoding="utf-8") as file:
        try:
            first = json.loads(file.readline())
        except json.JSONDecodeError:
            return None
    return first.get("model_id") if isinstance(first, dict) else None


def open_image(ref: ImageRef, sample: Sample):
    """The sample's image as RGB, read as LLaVA's eval scripts do (no EXIF rotation); unreadable: ValueError."""
    try:
        return load_image(ref() if callable(ref) else ref, exif_orientation=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"question {sample.question_id}: cannot read its image ({err})") from err


def ensure_pad_token(tokenizer: Any) -> None:
    """Batches are padded: a tokenizer without a pad token pads with unk (as LLaVA) or eos."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


def question_prompt(processor: Any, sample: Sample) -> str:
    """The prompt the model is given: the template's human turn, with the image placeholder if it has an image."""
    tokenizer = processor.tokenizer
    human = sample.text if sample.image is None else f"{processor.image_token}\n{sample.text}"
    return render_prompt(processor.template, [Turn("human", human)], tokenizer=tokenizer,
                         eos=tokenizer.eos_token or "</s>")


def generate_kwargs(model: Any, tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    """What eval passes to `generate` besides the inputs: greedy decoding (also part of the answers' key)."""
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id,
        "suppress_tokens": [model.config.image_token_id],  # never emit a visual position
    }


@torch.inference_mode()
def answer_batch(model: Any, processor: Any, samples: list[Sample], images: list, max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of questions, left-padded so every prompt ends where generation starts.

    `images[k]` is sample k's image or None (a text-only question gets no placeholder).
    """
    tokenizer = processor.tokenizer
    prompts = [question_prompt(processor, sample) for sample in samples]
    pictures = [image for image in images if image is not None]
    batch = processor(prompts, pictures or None, padding_side="left").to(model.device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    output = model.generate(**batch, **generate_kwargs(model, tokenizer, max_new_tokens))
    new_tokens = output[:, batch["input_ids"].shape[1]:]  # [B, generated]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_record(sample: Sample, text: str, model_id: str, benchmark: str, key: dict | None) -> dict:
    """One line of LLaVA's answer file, with the key of what determined the answer (keys.py)."""
    return {
        "question_id": sample.question_id,
        "prompt": sample.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex,
        "model_id": model_id,
        "metadata": {"benchmark": benchmark, **sample.meta},
        "key": key,
    }


def generate_answers(
    model: Any,
    processor: Any,
    samples: list[Sample],
    answers_path: Path,
    *,
    keys: list[dict | None],
    model_id: str,
    benchmark: str,
    batch_size: int,
    max_new_tokens: int,
    on_bad_sample: str = "error",
    progress: Progress | None = None,
) -> tuple[int, list[tuple[Sample, str]]]:
    """Answer `samples` in batches, appending each batch to `answers_path` and flushing it.

    `keys[k]` is written with sample k's answer (the key it was asked under).

    Returns (answers written, [(sample, why)] left out because their image could not be read,
    with on_bad_sample="skip"; with "error" that raises).
    """
    ensure_pad_token(processor.tokenizer)
    written, left_out = 0, []
    if progress is not None:
        progress(0, len(samples))
    with open(answers_path, "a", encoding="utf-8") as file:
        for start in range(0, len(samples), batch_size):
            kept, kept_keys, images = [], [], []
            for sample, key in zip(samples[start:start + batch_size], keys[start:start + batch_size]):
                try:
                    images.append(None if sample.image is None else open_image(sample.image, sample))
                    kept.append(sample)
                    kept_keys.append(key)
                except ValueError as err:
                    if on_bad_sample == "error":
                        raise
                    left_out.append((sample, str(err)))
            texts = answer_batch(model, processor, kept, images, max_new_tokens) if kept else []
            for sample, key, text in zip(kept, kept_keys, texts):
                record = answer_record(sample, text, model_id, benchmark, key)
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
            file.flush()  # a killed run keeps every finished batch
            written += len(texts)
            if progress is not None:
                progress(min(start + batch_size, len(samples)), len(samples))
    return written, left_out
