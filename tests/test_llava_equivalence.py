"""The `llava` pattern with the `mlp` adapter *is* LLaVA: same weights, same logits."""

import pytest
import torch

from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

from conftest import M_V, image_prompt, pad_batch, tiny_llava


def _batch(side):
    rows = [image_prompt(30, image_at=3, seed=1), image_prompt(24, image_at=6, seed=2), image_prompt(12, None, seed=3)]
    return pad_batch(rows, side)


@pytest.mark.parametrize("side", ["left", "right"])
def test_llava_pattern_matches_transformers_llava(side, pixels):
    llava = tiny_llava()
    input_ids, attention_mask = _batch(side)  # two samples with an image, one text-only
    with torch.no_grad():
        expected = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
    model = SparseCutForConditionalGeneration.from_llava(llava).eval()
    assert model.config.shortcuts == [(3, 1)] and model.config.adapter == "mlp"
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    assert (got - expected)[real].abs().max() < 1e-4


def test_llava_pattern_generates_the_same_tokens_as_llava(pixels):
    llava = tiny_llava()
    input_ids, attention_mask = _batch("left")
    kwargs = dict(input_ids=input_ids[:2], attention_mask=attention_mask[:2], pixel_values=pixels,
                  max_new_tokens=6, do_sample=False, pad_token_id=0)
    expected = llava.generate(**kwargs)
    got = SparseCutForConditionalGeneration.from_llava(llava).eval().generate(**kwargs)
    assert torch.equal(got, expected)


def test_from_llava_by_path(tmp_path, pixels):
    llava = tiny_llava()
    llava.save_pretrained(tmp_path)
    input_ids, attention_mask = _batch("right")
    with torch.no_grad():
        expected = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
        got = SparseCutForConditionalGeneration.from_llava(tmp_path).eval()(
            input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
    assert (got - expected)[attention_mask.bool()].abs().max() < 1e-4


def test_overrides_turn_llava_into_sparsecut_starting_from_its_projector():
    llava = tiny_llava()
    projector = {k: v.clone() for k, v in llava.model.multi_modal_projector.state_dict().items()}
    model = SparseCutForConditionalGeneration.from_llava(llava, pattern="sparse-uniform", num_shortcuts=2, hi_res=True)
    assert model.config.adapter == "xattn" and model.config.hi_res
    assert model.config.shortcuts == [(3, 1), (1, 3)]
    for name, value in model.adapter.adapters[0].projector.state_dict().items():
        assert torch.equal(value, projector[name])
    assert model.adapter.adapters[0].block is not None


def test_explicit_adapter_override_is_kept():
    model = SparseCutForConditionalGeneration.from_llava(tiny_llava(), pattern="sparse-bottom", num_shortcuts=2,
                                                         adapter="mlp")
    assert model.config.adapter == "mlp"


def test_full_feature_select_and_other_feature_layer_match_llava(pixels):
    """LLaVA's `full` strategy (CLS kept) and a non-default feature layer map onto SparseCut's config."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from conftest import IMAGE_TOKEN, tiny_text_config, tiny_vision_config

    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=tiny_vision_config(), text_config=tiny_text_config(), image_token_id=IMAGE_TOKEN,
        vision_feature_select_strategy="full", vision_feature_layer=-3)).eval()
    rows = [image_prompt(30, None, seed=1), image_prompt(30, None, seed=2)]
    for row in rows:
        row[4:4 + M_V + 1] = IMAGE_TOKEN  # 16 patches + CLS
    input_ids, attention_mask = pad_batch(rows, "right")
    with torch.no_grad():
        expected = llava(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
        model = SparseCutForConditionalGeneration.from_llava(llava).eval()
        got = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
    assert model.config.shortcuts == [(2, 1)] and model.config.num_image_tokens == M_V + 1
    assert (got - expected).abs().max() < 1e-4
