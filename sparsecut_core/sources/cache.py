"""The conversion cache: a converted source lives in a folder keyed by its file's hash, written atomically."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

_HASH_CHARS = 16  # hex digits of the file's sha256 naming its cache folder


def default_cache_dir(environ: Mapping[str, str], home: Path) -> Path:
    """The one folder of every converted source: $XDG_CACHE_HOME/sparsecut, else ~/.cache/sparsecut.

    Each source names its own folders in it (`gguf-<key>`, `onnx-<key>`). The environment is
    passed in by the caller (core reads none itself).
    """
    base = environ.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(base) / "sparsecut"


def file_key(path: Path) -> str:
    """The cache key of a file: the first 16 hex digits of its sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:_HASH_CHARS]


def write_folder_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """`write(scratch)` fills a temporary folder next to `target`, which is then renamed into place.

    An interrupted conversion never leaves a half folder; a finished one already there (a
    concurrent conversion that won the race) is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(scratch)
        try:
            os.rename(scratch, target)
        except OSError as err:
            if not (target / "config.json").is_file():
                raise ValueError(f"cannot move the converted folder into {target} ({err.strerror})") from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
