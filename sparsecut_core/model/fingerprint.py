"""A model folder's weights id: a content hash of its weight files, written beside them at every save.

Evaluation keys its answers by it, so answers of one set of weights are never scored as
another's. `save_pretrained` writes `weights_id.json` (the hash and each weight file's size
and mtime); `weights_id` trusts that file only while the files it names are unchanged, and
otherwise hashes the weight files again (streaming), as for a folder saved by another tool.
Nothing is cached outside the save: a folder without the file is hashed each time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

WEIGHTS_ID_FILE = "weights_id.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 8 << 20  # bytes per read: the hash streams, never holding a weight file in memory


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a saved model folder (shards included), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _stamps(files: list[Path]) -> dict[str, list[int]]:
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def hash_weight_files(files: list[Path]) -> str:
    """16 hex digits of sha256 over each file's name, size and bytes, in name order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def write_weights_id(folder: Path) -> str:
    """Hash the folder's weight files and record the id with their sizes and mtimes.

    Atomic like files.write_json_atomic, which this room may not import.
    """
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise ValueError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to compute a weights id from")
    ident = hash_weight_files(files)
    handle, temporary = tempfile.mkstemp(prefix=f".{WEIGHTS_ID_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({"weights_id": ident, "files": _stamps(files)}, file, indent=2)
            file.write("\n")
        os.replace(temporary, folder / WEIGHTS_ID_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return ident


def _recorded_id(folder: Path, files: list[Path]) -> str | None:
    """The id in weights_id.json if it names exactly these files, unchanged since it was written."""
    try:
        recorded = json.loads((folder / WEIGHTS_ID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("files") != _stamps(files):
        return None
    ident = recorded.get("weights_id")
    return ident if isinstance(ident, str) and ident else None


def weights_id(folder: Path) -> str | None:
    """The folder's weights id: recorded at save time if still valid, else hashed now; None without weights."""
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        return None
    return _recorded_id(folder, files) or hash_weight_files(files)


def tensors_id(model: torch.nn.Module) -> str:
    """16 hex digits of sha256 over a model's state dict in memory (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

