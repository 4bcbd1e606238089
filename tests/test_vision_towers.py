"""Vision towers beyond CLIP: DINOv2's class and register tokens, and a clear error when the token counts disagree."""

import pytest
import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig

from conftest import IMAGE_SIZE, IMAGE_TOKEN, M_V, image_prompt, tiny_config
from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             image_size=IMAGE_SIZE, patch_size=7)


def model_with(vision_config, **kw) -> SparseCutForConditionalGeneration:
    torch.manual_seed(0)
    return SparseCutForConditionalGeneration(tiny_config(vision_config=vision_config, **kw)).eval()


@pytest.mark.parametrize("vision_config, prefix", [
    (Dinov2Config(**TOWER), 1),
    (Dinov2WithRegistersConfig(**TOWER, num_register_tokens=2), 3),
])
def test_patch_features_of_dinov2_drop_its_class_and_register_tokens(vision_config, prefix, pixels):
    model = model_with(vision_config)
    assert model.config.num_image_tokens == M_V
    low, _ = model.vision_features(pixels)
    tower = model.vision_tower(pixels, output_hidden_states=True).hidden_states
    for layer, features in low.items():
        assert torch.equal(features, tower[layer][:, prefix:])
    ids = torch.stack([image_prompt(24, 3, seed=k) for k in range(2)])
    assert model(input_ids=ids, pixel_values=pixels).logits.shape == (2, 24, 100)


def test_full_features_of_dinov2_keep_the_class_token_as_one_more_image_token(pixels):
    model = model_with(Dinov2Config(**TOWER), vision_feature_select="full")
    assert model.config.num_image_tokens == M_V + 1
    ids = torch.full((2, M_V + 1 + 4), 5)
    ids[:, 2:2 + M_V + 1] = IMAGE_TOKEN
    assert model(input_ids=ids, pixel_values=pixels).logits.shape[:2] == ids.shape


def test_images_of_another_size_than_the_config_is_a_clear_error_not_an_indexing_traceback():
    model = model_with(Dinov2Config(**TOWER))  # DINOv2 interpolates its positions: any size runs through the tower
    ids = torch.stack([image_prompt(24, 3, seed=k) for k in range(2)])
    with pytest.raises(ValueError, match=r"gives 36 feature tokens per view .* M_v = 16"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 42, 42))
