"""The attention kernel: flash-attention 2 where it can run, SDPA elsewhere, and the choice reaches every part."""

import pytest
import torch

import sparsecut_core.model.attention as attention
from sparsecut_core.model.attention import resolve_attention
from sparsecut_core.training.config import TrainConfig
from sparsecut_core.training.setup import prepare_model

from conftest import tiny_model


@pytest.fixture
def flash_installed(monkeypatch):
    monkeypatch.setattr(attention, "flash_attention_available", lambda: True)


def test_auto_is_sdpa_on_cpu_and_in_fp32(flash_installed):
    assert resolve_attention("auto", "cpu", "bf16") == "sdpa"
    assert resolve_attention("auto", torch.device("cuda"), "no") == "sdpa"
    assert resolve_attention("auto", "cuda", torch.float32) == "sdpa"


def test_auto_is_flash_attention_on_a_gpu_in_half_precision_when_installed(flash_installed):
    assert resolve_attention("auto", "cuda", "bf16") == "flash_attention_2"
    assert resolve_attention("auto", "cuda:0", torch.float16) == "flash_attention_2"


def test_auto_is_sdpa_without_flash_attn(monkeypatch):
    monkeypatch.setattr(attention, "flash_attention_available", lambda: False)
    assert resolve_attention("auto", "cuda", "bf16") == "sdpa"


def test_an_explicit_choice_is_kept_and_a_wrong_one_named():
    assert resolve_attention("eager", "cuda", "bf16") == "eager"
    with pytest.raises(ValueError, match="attention: expected one of auto, sdpa, eager, flash_attention_2, got 'flash'"):
        resolve_attention("flash", "cpu", "no")
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(stage="finetune", output_dir="x", learning_rate=1e-3, global_batch_size=2, attention="flash")


def test_training_sets_the_kernel_of_the_vision_tower_and_the_llm(tmp_path):
    config = TrainConfig(stage="finetune", output_dir=str(tmp_path), learning_rate=1e-3, global_batch_size=2,
                         attention="eager")
    model = prepare_model(tiny_model(), config)
    assert model.config._attn_implementation == "eager"
    assert model.language_model.config._attn_implementation == "eager"
    assert model.vision_tower.config._attn_implementation == "eager"
    auto = prepare_model(tiny_model(), TrainConfig(stage="finetune", output_dir=str(tmp_path), learning_rate=1e-3,
                                                   global_batch_size=2))
    assert auto.language_model.config._attn_implementation == "sdpa"
