"""Training records in LLaVA's data format, read from a file, a `datasets` dataset or the built-in `shapes`.

A record is `{"id", "image" (optional), "conversations": [{"from": "human"|"gpt", "value"}]}`;
a human turn of an image record carries the `<image>` placeholder once. Each source
becomes a list of validated `Record`s whose `image` is a reference the `ImageSource`
resolves at batch time (a file path, a row of a dataset's image column, or a
generated shapes scene), so that no image is decoded before it is needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..model.images import load_image
from .shapes import SPLITS, shapes_sample, shapes_split_size
from .templates import IMAGE_PLACEHOLDER, Turn

ROLES = ("human", "gpt")
BAD_SAMPLE_POLICIES = ("error", "skip")


class BadSample(ValueError):
    """A record that cannot be trained on; the message names it."""


@dataclass(frozen=True)
class Record:
    id: str
    image: str | None  # reference resolved by ImageSource; None for text-only records
    turns: tuple[Turn, ...]
    where: str = ""  # "file:line" for messages

    def fingerprint(self) -> str:
        return json.dumps([self.id, self.image, [(t.role, t.text) for t in self.turns]])


@dataclass
class SkipCounter:
    """Bad samples skipped under `--on-bad-sample skip`, by reason (reported at the end)."""

    policy: str = "error"
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample: expected one of {', '.join(BAD_SAMPLE_POLICIES)}, got {self.policy!r}")

    def handle(self, error: BadSample) -> None:
        """Raise under `error`; count under `skip` (by the message's reason, after the record name)."""
        if self.policy == "error":
            raise error
        reason = str(error).split(": ", 1)[-1]
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.skipped.values())


def _name(raw: dict[str, Any], where: str) -> str:
    return f"{where} (id {raw.get('id')!r})" if isinstance(raw, dict) and raw.get("id") is not None else where


def parse_record(raw: Any, where: str, images: Path | None) -> Record:
    """Validate one raw LLaVA record; `where` ("file:line") goes into every error."""
    name = _name(raw, where)
    if not isinstance(raw, dict):
        raise BadSample(f"{name}: expected a JSON object, got {type(raw).__name__}")
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise BadSample(f"{name}: no conversations")
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise BadSample(f"{name}: conversations[{k}] needs 'from' (human|gpt) and a string 'value'")
        expected = ROLES[k % 2]
        if turn["from"] != expected:
            raise BadSample(f"{name}: conversations[{k}] should be a {expected!r} turn")
        turns.append(Turn(turn["from"], turn["value"]))
    if turns[-1].role != "gpt":
        raise BadSample(f"{name}: the last turn must be the assistant's ('gpt')")
    placeholders = sum(t.text.count(IMAGE_PLACEHOLDER) for t in turns)
    image = raw.get("image")
    if image is None and placeholders:
        raise BadSample(f"{name}: {IMAGE_PLACEHOLDER} placeholder but no image")
    if image is not None and placeholders != 1:
        raise BadSample(f"{name}: an image needs exactly one {IMAGE_PLACEHOLDER} placeholder, found {placeholders}")
    if any(t.role == "gpt" and IMAGE_PLACEHOLDER in t.text for t in turns):
        raise BadSample(f"{name}: {IMAGE_PLACEHOLDER} in an assistant turn")
    if isinstance(image, str) and not image.startswith(("shapes:", "row:")):
        if images is None:
            raise BadSample(f"{name}: has an image but no image folder was given (--images)")
        path = images / image
        if not path.is_file():
            raise BadSample(f"{name}: image file {path} is missing")
        image = str(path)
    elif image is not None and not isinstance(image, str):
        raise BadSample(f"{name}: 'image' must be a relative path string")
    record_id = str(raw.get("id", where))
    return Record(record_id, image, tuple(turns), where)


def _raw_from_file(path: Path, skips: SkipCounter) -> list[tuple[Any, str]]:
    """(raw record, "file:line") pairs from LLaVA's .json (a list) or .jsonl.

    A .jsonl line that is not UTF-8 or not JSON is a bad record like any other: raised
    under the `error` policy, counted and left out under `skip`. Lines are split on
    newlines only (str.splitlines would also split on U+2028, which JSON strings may hold).
    """
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
            try:
                if line.strip():
                    out.append((json.loads(line.decode("utf-8")), f"{path}:{n}"))
            except UnicodeDecodeError as err:
                skips.handle(BadSample(f"{path}:{n}: not UTF-8 text (byte {err.start + 1})"))
            except json.JSONDecodeError as err:
                skips.handle(BadSample(f"{path}:{n}: malformed JSON ({err.msg})"))
        return out
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return [(raw, f"{path}[{k}]") for k, raw in enumerate(data)]


def _raw_from_datasets(path: Path) -> tuple[list[tuple[Any, str]], Any]:
    """Records of a `datasets` dataset saved to disk or stored as parquet; image columns stay in the dataset."""
    import datasets

    if path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
    else:
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("**/*.parquet"))
        if not files:
            raise ValueError(f"{path}: no dataset (save_to_disk folder, .parquet, .json or .jsonl) found")
        loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    has_image_column = "image" in loaded.column_names and isinstance(loaded.features["image"], datasets.Image)
    raws = []
    for k, row in enumerate(loaded.select_columns([c for c in loaded.column_names if c != "image"])):
        if has_image_column:
            row["image"] = f"row:{k}"
        raws.append((row, f"{path}[{k}]"))
    return raws, loaded if has_image_column else None


def _raw_shapes(spec: str, stage: str, image_size: int) -> list[tuple[Any, str]]:
    """`shapes`, `shapes:SPLIT` or `shapes:SPLIT:N`: captions for pretrain, dialogues for finetune."""
    parts = spec.split(":")
    split = parts[1] if len(parts) > 1 else "train"
    if split not in SPLITS or len(parts) > 3:
        raise ValueError(f"data {spec!r}: expected shapes[:{'|'.join(SPLITS)}[:N]]")
    count = int(parts[2]) if len(parts) == 3 else shapes_split_size(split)
    raws = []
    for index in range(count):
        sample = shapes_sample(split, index, image_size)
        if stage == "pretrain":
            conversations = [{"from": "human", "value": IMAGE_PLACEHOLDER}, {"from": "gpt", "value": sample.caption}]
        else:
            conversations = sample.conversations
        raws.append(({"id": sample.id, "image": f"shapes:{split}:{index}", "conversations": conversations},
                     f"{spec}[{index}]"))
    return raws


@dataclass
class ImageSource:
    """Resolves a record's image reference to a PIL image, at batch time."""

    dataset: Any = None  # a `datasets.Dataset` with an `image` column, for "row:K" references
    shapes_size: int = 224

    def load(self, record: Record) -> Image.Image:
        ref = record.image
        try:
            if ref.startswith("shapes:"):
                _, split, index = ref.split(":")
                return shapes_sample(split, int(index), self.shapes_size).image
            if ref.startswith("row:"):
                return load_image(self.dataset[int(ref[4:])]["image"])
            return load_image(ref)
        except (OSError, ValueError) as err:
            raise BadSample(f"{record.where} (id {record.id!r}): unreadable image ({err})") from None


def load_records(
    data: str | Path,
    *,
    images: str | Path | None = None,
    stage: str = "finetune",
    image_size: int = 224,
    skips: SkipCounter | None = None,
) -> tuple[list[Record], ImageSource]:
    """Validated records of a data source and the resolver of their images."""
    skips = skips or SkipCounter()
    image_dir = Path(images) if images is not None else None
    source = ImageSource(shapes_size=image_size)
    text = str(data)
    if text == "shapes" or text.startswith("shapes:"):
        raws = _raw_shapes(text, stage, image_size)
    else:
        path = Path(data)
        if not path.exists():
            raise ValueError(f"data: {path} does not exist")
        if path.suffix in (".json", ".jsonl"):
            raws = _raw_from_file(path, skips)
        else:
            raws, source.dataset = _raw_from_datasets(path)
    records = []
    for raw, where in raws:
        try:
            records.append(parse_record(raw, where, image_dir))
        except BadSample as err:
            skips.handle(err)
    if not records:
        raise ValueError(f"data: {data} has no usable records")
    return records, source


def records_fingerprint(records: list[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.fingerprint().encode())
    return digest.hexdigest()[:16]

