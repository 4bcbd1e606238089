"""From records to training batches: cached tokenization, length/modality grouping, collation."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.processing import SparseCutProcessor
from .labels import IGNORE_INDEX, TokenizationMismatch, encode_dialogue
from .records import BadSample, ImageSource, Record, SkipCounter, records_fingerprint
from .templates import IMAGE_PLACEHOLDER, Turn

# Batches are drawn from "megabatches" of this many batches, sorted by length inside,
# so a batch holds samples of similar length (little padding) yet the order stays random.
MEGABATCH = 16


def _tokenizer_fingerprint(processor: SparseCutProcessor) -> str:
    tokenizer = processor.tokenizer
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr((vocab, tokenizer.chat_template, type(tokenizer).__name__)).encode()).hexdigest()[:16]


def encode_record(record: Record, processor: SparseCutProcessor, template: str, max_length: int) -> dict[str, Any]:
    """input_ids/labels of one record, its image placeholder expanded to the model's visual positions."""
    expanded = IMAGE_PLACEHOLDER * processor.num_image_tokens
    turns = [Turn(t.role, t.text.replace(IMAGE_PLACEHOLDER, expanded)) for t in record.turns]
    name = f"{record.where} (id {record.id!r})"
    try:
        encoded = encode_dialogue(template, turns, processor.tokenizer, max_length=max_length)
    except TokenizationMismatch as err:
        raise BadSample(f"{name}: tokenization mismatch: {err}") from None
    if record.image is not None:
        visual = sum(1 for token in encoded.input_ids if token == processor.image_token_id)
        if visual != processor.num_image_tokens:
            raise BadSample(f"{name}: the image's {processor.num_image_tokens} positions do not fit in "
                            f"max_length {max_length}")
    if all(label == IGNORE_INDEX for label in encoded.labels):
        raise BadSample(f"{name}: no assistant tokens left within max_length {max_length}")
    return {"input_ids": encoded.input_ids, "labels": encoded.labels}


def encode_records(
    records: list[Record],
    processor: SparseCutProcessor,
    *,
    template: str,
    max_length: int,
    skips: SkipCounter,
    cache_dir: str | Path | None = None,
):
    """A `datasets.Dataset` of (index, input_ids, labels, length, has_image), bad records dropped.

    The tokenization is cached in `cache_dir` under a key of the records, tokenizer,
    template, max_length and visual positions, so a rerun (or resume) reuses it.
    """
    import datasets

    key = hashlib.sha256(
        "|".join([records_fingerprint(records), _tokenizer_fingerprint(processor), template, str(max_length),
                  str(processor.num_image_tokens)]).encode()
    ).hexdigest()[:20]

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out = {"input_ids": [], "labels": [], "length": [], "has_image": [], "bad": []}
        for index in batch["index"]:
            record = records[index]
            try:
                encoded, bad = encode_record(record, processor, template, max_length), ""
            except BadSample as err:
                if skips.policy == "error":
                    raise
                encoded, bad = {"input_ids": [], "labels": []}, str(err)
            out["input_ids"].append(encoded["input_ids"])
            out["labels"].append(encoded["labels"])
            out["length"].append(len(encoded["input_ids"]))
            out["has_image"].append(record.image is not None)
            out["bad"].append(bad)
        return out

    table = datasets.Dataset.from_dict({"index": list(range(len(records)))})
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"tokenized-{key}.arrow")
    encoded = table.map(encode, batched=True, batch_size=256, cache_file_name=cache_file, new_fingerprint=key,
                        desc=None)
    bad = [reason for reason in encoded["bad"] if reason]
    for reason in bad:
        skips.handle(BadSample(reason))
    if bad:
        encoded = encoded.filter(lambda row: not row["bad"], cache_file_name=None if cache_file is None else
                                 cache_file.replace(".arrow", "-kept.arrow"))
    if len(encoded) == 0:
        raise ValueError("data: no record survives tokenization")
    return encoded.remove_columns("bad")


def modality_length_batches(
    lengths: list[int], has_image: list[bool], batch_size: int, *, seed: int, epoch: int
) -> list[list[int]]:
    """Batches of indices, each all-image or all-text, of similar lengths, in a seeded random order.

    As LLaVA's `group_by_modality_length`: each modality is shuffled, cut into megabatches
    sorted by length, and the batches of both are shuffled together. Deterministic in
    (seed, epoch), which is what makes a resumed run see the same data order.
    """
    rng = random.Random(f"{seed}-{epoch}")
    batches = []
    for modality in (True, False):
        indices = [i for i, flag in enumerate(has_image) if flag == modality]
        rng.shuffle(indices)
        span = batch_size * MEGABATCH
        for start in range(0, len(indices), span):
            mega = sorted(indices[start:start + span], key=lambda i: -lengths[i])
            batches += [mega[k:k + batch_size] for k in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Collator:
    """Pads a list of encoded rows into a batch and renders the images' views.

    A row whose image cannot be read is a BadSample: raised under the `error` policy,
    else dropped, its reason listed in the batch's "bad_samples" (collation may run in
    DataLoader workers, so the training loop does the counting). A batch whose rows
    were all dropped holds only "bad_samples".
    """

    processor: SparseCutProcessor
    records: list[Record]
    images: ImageSource
    on_bad_sample: str = "error"

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        kept, pictures, bad = [], [], []
        for row in rows:
            record = self.records[row["index"]]
            if record.image is not None:
                try:
                    pictures.append(self.images.load(record))
                except BadSample as err:
                    if self.on_bad_sample == "error":
                        raise
                    bad.append(str(err))
                    continue
            kept.append(row)
        if not kept:
            return {"bad_samples": bad}
        width = max(len(row["input_ids"]) for row in kept)
        pad = self.processor.tokenizer.pad_token_id
        pad = pad if pad is not None else 0
        input_ids = torch.full((len(kept), width), pad, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        for k, row in enumerate(kept):  # right padding, as in training
            n = len(row["input_ids"])
            input_ids[k, :n] = torch.tensor(row["input_ids"])
            labels[k, :n] = torch.tensor(row["labels"])
            attention_mask[k, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "bad_samples": bad}
        if pictures:
            batch["pixel_values"] = torch.from_numpy(self.processor.pixel_values(pictures))
        return batch
