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


def test_a_working_image_size_other_than_the_towers_sets_the_image_tokens_and_runs():
    model = model_with(Dinov2Config(**TOWER), image_size=42)  # pretrained at 28 px, used at 42: 6x6 patches
    assert model.config.num_image_tokens == 36
    ids = torch.full((1, 36 + 6), 5)
    ids[:, 3:39] = IMAGE_TOKEN
    assert model(input_ids=ids, pixel_values=torch.randn(1, 3, 42, 42)).logits.shape[:2] == ids.shape


def test_a_preset_may_put_a_pretrained_tower_before_a_random_llm_at_its_own_image_size(tmp_path):
    from PIL import Image
    from transformers import BitImageProcessor, Dinov2Model

    from sparsecut_core.presets.build import build_from_preset
    from sparsecut_core.presets.preset import PRESET_DIR, load_preset

    torch.manual_seed(0)
    tower = Dinov2Model(Dinov2Config(**TOWER)).eval()
    tower.save_pretrained(tmp_path / "tower")
    BitImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(
        tmp_path / "tower")
    text = (PRESET_DIR / "tiny.toml").read_text()  # tiny, with the saved tower as its vision source
    text = text.replace("[vision]\n", f'[vision]\nsource = "{(tmp_path / "tower").as_posix()}"\n', 1)
    text = text.replace('model_type = "clip_vision_model", hidden_size = 64, intermediate_size = 128, '
                        'num_hidden_layers = 6, num_attention_heads = 4, image_size = 56, patch_size = 8, '
                        'hidden_act = "quick_gelu"',
                        'model_type = "dinov2", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 4, '
                        'num_attention_heads = 4, image_size = 28, patch_size = 7')
    text = text.replace("num_shortcuts = 3\n", "num_shortcuts = 2\nimage_size = 42\n", 1)
    (tmp_path / "p.toml").write_text(text)

    model, processor = build_from_preset(load_preset(tmp_path / "p.toml"))
    for name, value in tower.state_dict().items():  # the tower's weights, untouched by the new model's init
        assert torch.equal(model.vision_tower.state_dict()[name], value)
    assert processor.base_size == 42 and list(processor.image_processor.image_mean) == [0.485, 0.456, 0.406]
    batch = processor([f"USER: {processor.image_token}\nWhat is it? ASSISTANT:"], [Image.new("RGB", (60, 40))])
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 36
    assert model(**batch).logits.shape[1] == batch["input_ids"].shape[1]
