"""Finding and reading a benchmark's files: LLaVA's folder layout, JSON/JSONL, Hugging Face datasets on disk."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image


def need_dir(name: str, data: Path | None) -> Path:
    if data is None:
        raise ValueError(f"benchmark {name}: give --data (its folder in LLaVA's layout, or a Hugging Face dataset)")
    data = Path(data)
    if not data.exists():
        raise ValueError(f"benchmark {name}: data {data} does not exist")
    return data


def find_first(root: Path, candidates: Sequence[str]) -> Path | None:
    """The first candidate (a relative path or a glob pattern) that exists under `root`."""
    for candidate in candidates:
        matches = sorted(root.glob(candidate)) if any(c in candidate for c in "*?[") else [root / candidate]
        for path in matches:
            if path.exists():
                return path
    return None


def question_file(data: Path, candidates: Sequence[str]) -> Path | None:
    """`data` itself when it is a file, else the first candidate question file inside it."""
    return data if data.is_file() else find_first(data, candidates)


def image_folder(root: Path, candidates: Sequence[str]) -> Path:
    found = find_first(root, candidates)
    return found if found is not None and found.is_dir() else root


def file_image(image_dir: Path, name: str, where: str) -> tuple[Path, str | None]:
    path = image_dir / name
    return path, (None if path.is_file() else f"{where}: image {path} not found")


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


def hf_rows(dataset, image_columns: Sequence[str] = ("image",)):
    """(index, row without its image columns) for every row, decoding no image."""
    text_only = dataset.remove_columns([c for c in image_columns if c in dataset.column_names])
    return enumerate(text_only)


def hf_image(dataset, index: int, column: str = "image") -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        value = dataset[index][column]
        return value[0] if isinstance(value, list) else value  # SEED's column is a list of images

    return load
