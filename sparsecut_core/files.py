"""Writing files so that a crash never leaves a half-written one: a temporary file, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write `data` as JSON to a temporary file beside `path`, then rename it over `path`."""
    return write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot save {path}: folder {path.parent} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
