"""What determines an answer, as the key each answer line carries: model, generation settings, question as asked.

A key is `{"weights_id", "config_hash", "generation", "input"}`: the content hash of the
weights (model/fingerprint.py) and the config hash, every setting `generate` runs with
(the model's generation config, what eval passes, the dtype and quantization), and a hash
of the question as the model sees it (rendered prompt, image content, image-ablation
condition, processor settings). A rerun reuses an answer only under an equal key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..model.images import is_url
from .benchmarks.base import ImageRef, Sample

_CHUNK = 8 << 20

MODEL_FIELDS = ("weights_id", "config_hash")  # a change here is another model: the runner stops
STALE_REASONS = {  # why an earlier answer to the same question is not reused
    "unkeyed": "written without a key by an older sparsecut",
    "generation": "the generation settings changed",
    "input": "the prompt, image or processor changed",
}


def _json_safe(value: Any) -> Any:
    """As it reads back from an answers file (tuples become lists), so keys compare equal after a round trip."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def quantization(model: Any) -> str | None:
    """"4bit/<compute dtype>" or "8bit" for a bitsandbytes-quantized model, else None."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if data.get("load_in_4bit"):
        return f"4bit/{data.get('bnb_4bit_quant_type', '')}/{data.get('bnb_4bit_compute_dtype', '')}"
    if data.get("load_in_8bit"):
        return "8bit"
    return str(data.get("quant_method", "quantized"))


UNUSED_SETTINGS = ("transformers_version", "output_attentions", "output_hidden_states", "output_scores",
                   "output_logits", "return_dict_in_generate")  # change what generate returns, not the answer


def generation_settings(model: Any, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything `generate` answers with: the model's generation config overridden by eval's kwargs, dtype, bits."""
    defaults = {k: v for k, v in model.generation_config.to_diff_dict().items()
                if k not in UNUSED_SETTINGS and not k.startswith("_")}  # "_from_model_config": bookkeeping
    return _json_safe({**defaults, **generate_kwargs, "dtype": str(model.dtype).removeprefix("torch."),
                       "quantization": quantization(model)})


def image_digest(ref: ImageRef) -> str | None:
    """sha256 of an image's content: a file's bytes, or an image's mode, size and pixels; None if unreadable."""
    if ref is None:
        return "none"
    digest = hashlib.sha256()
    try:
        if isinstance(ref, (str, Path)) and not is_url(ref):
            with open(ref, "rb") as file:
                while chunk := file.read(_CHUNK):
                    digest.update(chunk)
        else:
            image = ref() if callable(ref) else ref
            if isinstance(image, (str, Path)):
                return image_digest(image)
            digest.update(f"{image.mode}\0{image.size}\0".encode())
            digest.update(image.tobytes())
    except (OSError, ValueError):
        return None  # never matches: the sample is asked, and asking reports the bad image
    return digest.hexdigest()[:16]


def processor_digest(processor: Any) -> str:
    """12 hex digits of the processor's saved settings (image size and normalization, template, image tokens)."""
    return hashlib.sha256(processor.to_json_string().encode()).hexdigest()[:12]


def input_digest(prompt: str, sample: Sample, processor: str) -> str | None:
    """16 hex digits of the question as the model sees it; None when its image cannot be read."""
    image = image_digest(sample.image)
    if image is None:
        return None
    text = json.dumps([prompt, image, sample.meta.get("ablation"), processor])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def answer_key(model: dict[str, str | None], generation: dict[str, Any], prompt_input: str | None) -> dict | None:
    """The key of one answer (None: the question cannot be keyed, so it is always asked)."""
    if prompt_input is None:
        return None
    return {**model, "generation": generation, "input": prompt_input}


def stale_reason(record: dict, key: dict) -> str:
    """Why an earlier answer to the same question (same id and prompt) does not count under `key`."""
    old = record.get("key")
    if not isinstance(old, dict):
        return "unkeyed"
    return "generation" if old.get("generation") != key["generation"] else "input"


def other_model(records: list[dict], model: dict[str, str | None]) -> dict | None:
    """The model part of the first keyed record that belongs to another model (weights or config), if any."""
    for record in records:
        old = record.get("key")
        if isinstance(old, dict) and any(old.get(f) != model[f] for f in MODEL_FIELDS):
            return {f: old.get(f) for f in MODEL_FIELDS}
    return None
