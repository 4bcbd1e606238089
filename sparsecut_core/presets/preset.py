"""Presets: one TOML file per model setup in the repository's `presets/` folder.

A preset names the vision tower and the LLM (a hub id or local folder in
`source`, and the published architecture in `config` so the model can be built
or costed without downloading anything), the SparseCut design, the
conversation template and the per-stage training hyperparameters.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ..model.configuration import SparseCutConfig
from ..training.config import TrainConfig

PRESET_DIR = Path(__file__).resolve().parents[2] / "presets"

_TOP_KEYS = {"name", "description", "template", "tokenizer", "vision", "llm", "image_processor", "sparsecut", "train"}
_PART_KEYS = {"source", "config"}
# A preset's [train.STAGE] may set any TrainConfig field but the two a run supplies, plus the stage's default data.
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"stage", "output_dir"} | {"data", "images"}
_TOKENIZERS = ("word", "llm")


@dataclass(frozen=True)
class PartSpec:
    """A pretrained part: where its weights are (None: random init) and its architecture."""

    source: str | None
    config: dict[str, Any]

    def hf_config(self, **overrides: Any) -> PretrainedConfig:
        fields = {**self.config, **overrides}
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    template: str
    tokenizer: str
    vision: PartSpec
    llm: PartSpec
    sparsecut: dict[str, Any]
    image_processor: dict[str, Any] = field(default_factory=dict)
    train: dict[str, dict[str, Any]] = field(default_factory=dict)

    def sparsecut_config(
        self,
        vocab_size: int | None = None,
        image_token_id: int | None = None,
        text_overrides: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> SparseCutConfig:
        """The model config from the preset's architectures alone (no weights, no downloads)."""
        llm_overrides = dict(text_overrides or {})
        if vocab_size is not None:
            llm_overrides["vocab_size"] = vocab_size
        text_config = self.llm.hf_config(**llm_overrides)
        if image_token_id is None:
            image_token_id = text_config.vocab_size  # the placeholder is appended to the vocabulary
            text_config.vocab_size += 1
        return SparseCutConfig(
            vision_config=self.vision.hf_config(),
            text_config=text_config,
            image_token_id=image_token_id,
            **{**self.sparsecut, **overrides},
        )


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ValueError(f"preset file {path} does not exist")
        return path
    path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets())}")
    return path


def _part(raw: Any, where: str) -> PartSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a table with `config` (and optionally `source`)")
    unknown = set(raw) - _PART_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    config = raw.get("config")
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{where}.config: must be a table with a model_type")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise ValueError(f"{where}.source: must be a hub id or folder path string")
    return PartSpec(source=source, config=dict(config))


def _train(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a table of stages")
    for stage, values in raw.items():
        if stage not in ("pretrain", "finetune"):
            raise ValueError(f"{where}.{stage}: unknown stage (pretrain, finetune)")
        unknown = set(values) - _TRAIN_KEYS
        if unknown:
            raise ValueError(f"{where}.{stage}: unknown keys {sorted(unknown)}")
    return {stage: dict(values) for stage, values in raw.items()}


def parse_preset(raw: dict[str, Any], where: str) -> Preset:
    """Validates a preset's data; every error names the file and the field."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("name", "vision", "llm", "sparsecut"):
        if key not in raw:
            raise ValueError(f"{where}: missing `{key}`")
    tokenizer = raw.get("tokenizer", "llm")
    if tokenizer not in _TOKENIZERS:
        raise ValueError(f"{where}: tokenizer must be one of {_TOKENIZERS}, got {tokenizer!r}")
    preset = Preset(
        name=raw["name"],
        description=raw.get("description", ""),
        template=raw.get("template", "vicuna_v1"),
        tokenizer=tokenizer,
        vision=_part(raw["vision"], f"{where}: vision"),
        llm=_part(raw["llm"], f"{where}: llm"),
        sparsecut=dict(raw["sparsecut"]),
        image_processor=dict(raw.get("image_processor", {})),
        train=_train(raw.get("train", {}), f"{where}: train"),
    )
    if tokenizer == "llm" and preset.llm.source is None:
        raise ValueError(f"{where}: tokenizer = 'llm' needs llm.source")
    try:
        preset.sparsecut_config(vocab_size=preset.llm.config.get("vocab_size", 32000))
    except Exception as err:  # transformers' strict configs raise their own error types
        cause = err.__cause__ or err
        raise ValueError(f"{where}: {cause}".splitlines()[0]) from err
    return preset


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by name (`presets/NAME.toml`) or by path to a TOML file, validated."""
    path = preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    return parse_preset(raw, str(path))
