"""sparsecut: SparseCut multimodal LLMs (sparse ViT-to-LLM shortcuts + hi-res fusion) on transformers."""

from transformers import AutoConfig, AutoModelForImageTextToText

from .configuration import SparseCutConfig
from .modeling import SparseCutForConditionalGeneration
from .processing import SparseCutProcessor

# Let transformers' Auto classes read saved SparseCut folders (config.json has model_type "sparsecut").
AutoConfig.register("sparsecut", SparseCutConfig, exist_ok=True)
AutoModelForImageTextToText.register(SparseCutConfig, SparseCutForConditionalGeneration, exist_ok=True)

__all__ = ["SparseCutConfig", "SparseCutForConditionalGeneration", "SparseCutProcessor"]
