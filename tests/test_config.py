import pytest

from sparsecut_core.model.configuration import SparseCutConfig

from conftest import tiny_config


def test_named_pattern_resolves_against_both_depths():
    config = tiny_config(pattern="sparse-uniform", num_shortcuts=2)
    assert config.shortcuts == [(3, 1), (1, 3)]
    assert config.source_layers == [1, 3]


def test_explicit_pairs_accept_tuples_and_survive_json(tmp_path):
    config = tiny_config(pattern=[(4, 2), (2, 1)])
    config.save_pretrained(tmp_path)
    loaded = SparseCutConfig.from_pretrained(tmp_path)
    assert loaded.shortcuts == [(2, 1), (4, 2)]
    assert loaded.to_dict() == config.to_dict()


def test_image_tokens_and_views_follow_the_vision_config():
    assert tiny_config().num_image_tokens == 16  # 28 px / patch 7 = 4x4, CLS dropped
    assert tiny_config(vision_feature_select="full").num_image_tokens == 17
    assert tiny_config(hi_res=True, crop_grid=[3, 2]).num_views == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(pattern=[(5, 1)]), "ViT layer 5 is out of range 1..4"),
        (dict(pattern=[(3, 5)]), "LLM layer 5 is out of range 1..4"),
        (dict(pattern=[(3, 1), (3, 1)]), "appears twice"),
        (dict(pattern=[]), "empty"),
        (dict(pattern="sparse-uniform", num_shortcuts=9), "shortcuts need"),
        (dict(crop_grid=[0, 2]), "crop_grid"),
        (dict(crop_grid=[2]), "crop_grid"),
        (dict(hi_res=True, adapter="mlp"), "hi_res needs adapter='xattn'"),
        (dict(adapter_num_heads=5), "adapter_num_heads=5 does not divide"),
    ],
)
def test_invalid_settings_fail_at_config_time(overrides, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**overrides)


def test_unknown_adapter_kind_is_rejected():
    with pytest.raises(Exception, match="adapter"):
        tiny_config(adapter="qformer")


def test_crop_grid_must_tile_the_patch_grid():
    from conftest import tiny_vision_config

    with pytest.raises(Exception, match="not a multiple of patch_size"):
        tiny_config(vision_config=tiny_vision_config(image_size=30))
