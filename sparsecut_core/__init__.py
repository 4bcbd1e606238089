"""sparsecut: SparseCut multimodal LLMs (sparse ViT-to-LLM shortcuts + hi-res fusion) on transformers.

The rooms, from the ground floor up (tests/test_layout.py holds them to it):
`model/` (the architecture and its processor), `data/` (templates, labels, records,
batching, the built-in shapes data), `sources/` (GGUF and other converted weights),
`inference/` (loading, 4-/8-bit, chat), `training/`, `presets/` (presets read and built),
`evaluation/` and `cost/`. The names below are the public API.
"""

from transformers import AutoConfig, AutoModelForImageTextToText

from .evaluation.runner import EvalSettings, evaluate
from .inference.chat import Chat, Sampling
from .inference.loading import load_pretrained
from .model.configuration import SparseCutConfig
from .model.modeling import SparseCutForConditionalGeneration
from .model.processing import SparseCutProcessor
from .presets.build import build_from_preset
from .presets.preset import available_presets, load_preset
from .training.config import TrainConfig
from .training.loop import train

# Let transformers' Auto classes read saved SparseCut folders (config.json has model_type "sparsecut").
AutoConfig.register("sparsecut", SparseCutConfig, exist_ok=True)
AutoModelForImageTextToText.register(SparseCutConfig, SparseCutForConditionalGeneration, exist_ok=True)

__all__ = [
    "Chat",
    "EvalSettings",
    "Sampling",
    "SparseCutConfig",
    "SparseCutForConditionalGeneration",
    "SparseCutProcessor",
    "TrainConfig",
    "available_presets",
    "build_from_preset",
    "evaluate",
    "load_pretrained",
    "load_preset",
    "train",
]
