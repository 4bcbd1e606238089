"""Tiny model fixtures shared by the tests: random weights, built in milliseconds."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from sparsecut_core.model.configuration import SparseCutConfig
from sparsecut_core.model.modeling import SparseCutForConditionalGeneration
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset

IMAGE_TOKEN = 99
VOCAB = 100
IMAGE_SIZE = 28  # patch 7 -> 4x4 = 16 visual tokens per view
M_V = 16


def tiny_vision_config(**kw) -> CLIPVisionConfig:
    fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=7)
    return CLIPVisionConfig(**{**fields, **kw})


def tiny_text_config(**kw) -> LlamaConfig:
    fields = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaConfig(**{**fields, **kw})


def tiny_config(**kw) -> SparseCutConfig:
    fields = dict(vision_config=tiny_vision_config(), text_config=tiny_text_config(), image_token_id=IMAGE_TOKEN,
                  pattern="sparse-uniform", num_shortcuts=2)
    return SparseCutConfig(**{**fields, **kw})


def tiny_model(seed: int = 0, **kw) -> SparseCutForConditionalGeneration:
    torch.manual_seed(seed)
    return SparseCutForConditionalGeneration(tiny_config(**kw)).eval()


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(), image_token_id=IMAGE_TOKEN)
    return LlavaForConditionalGeneration(config).eval()


def image_prompt(length: int, image_at: int | None, seed: int = 0) -> torch.Tensor:
    """[length] ids of text tokens (3..89) with one image's M_V placeholders starting at `image_at`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (length,), generator=g)
    if image_at is not None:
        ids[image_at:image_at + M_V] = IMAGE_TOKEN
    return ids


def pad_batch(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads 1-D id tensors with 0 on the given side; returns (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[k, sl], mask[k, sl] = r, 1
    return ids, mask


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def hires_pixels() -> torch.Tensor:
    return torch.randn(2, 5, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, processor, saved folder) of the tiny preset's random model, built once per test module."""
    model, processor = build_from_preset(load_preset("tiny"))
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor, folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls on a shared 2-core machine run ~20x faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
