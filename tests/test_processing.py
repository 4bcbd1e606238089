"""SparseCutProcessor: placeholder expansion, pixel_values layout, mixed batches, save/load."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from sparsecut_core.model.images import expand_to_square, make_views
from sparsecut_core.model.processing import SparseCutProcessor, add_image_token
from sparsecut_core.data.tokenizer import TINY_VOCAB, build_word_tokenizer

M_V = 4  # visual tokens per view in these tiny setups
BASE = 28
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_processor(side):
    return CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def noise(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(TINY_VOCAB)


def make_processor(tokenizer, hi_res=False, crop_grid=(2, 2), side=BASE):
    return SparseCutProcessor.from_parts(
        clip_image_processor(side), tokenizer, num_image_tokens=M_V, hi_res=hi_res, crop_grid=crop_grid
    )


def count_image_tokens(processor, input_ids):
    return (input_ids == processor.image_token_id).sum(dim=-1).tolist()


def test_low_res_pixel_values_are_one_view_per_image(tokenizer):
    processor = make_processor(tokenizer)
    out = processor(["<image> what colour?", "<image> how many?"], images=[noise(50, 30), noise(20, 40, 1)])
    assert out["pixel_values"].shape == (2, 3, BASE, BASE)
    assert out["pixel_values"].dtype == torch.float32


def test_hi_res_pixel_values_hold_low_view_then_crops_row_major(tokenizer):
    processor = make_processor(tokenizer, hi_res=True)
    image = noise(50, 30)
    out = processor("<image> describe", images=image)
    assert out["pixel_values"].shape == (1, 5, 3, BASE, BASE)  # [N, 1 + rows*cols, 3, H, W]
    views = make_views(image, BASE, (2, 2), processor.pad_fill)
    expected = processor.image_processor(views, return_tensors="pt")["pixel_values"]  # [5, 3, H, W]
    assert torch.equal(out["pixel_values"][0], expected)


def test_hi_res_supports_non_square_grids(tokenizer):
    processor = make_processor(tokenizer, hi_res=True, crop_grid=(1, 3))
    out = processor("<image>", images=noise(30, 30))
    assert out["pixel_values"].shape == (1, 4, 3, BASE, BASE)


def test_each_placeholder_becomes_exactly_m_v_image_tokens(tokenizer):
    processor = make_processor(tokenizer)
    out = processor("<image> left <image> right", images=[noise(8, 8), noise(8, 8, 1)])
    ids = out["input_ids"][0]
    assert count_image_tokens(processor, out["input_ids"]) == [2 * M_V]
    positions = (ids == processor.image_token_id).nonzero().flatten().tolist()
    assert positions == [1, 2, 3, 4, 6, 7, 8, 9]  # <s> then two runs of M_V split by "left"


@pytest.mark.parametrize("side", ["left", "right"])
def test_mixed_batch_pads_the_text_only_sample(tokenizer, side):
    processor = make_processor(tokenizer)
    out = processor(["<image> what shape is it?", "yes"], images=[noise(40, 20)], padding_side=side)
    assert out["pixel_values"].shape == (1, 3, BASE, BASE)
    assert count_image_tokens(processor, out["input_ids"]) == [M_V, 0]
    mask = out["attention_mask"][1]
    n_real = 2  # <s> yes
    expected = [1] * n_real + [0] * (len(mask) - n_real)
    assert mask.tolist() == (expected if side == "right" else expected[::-1])
    pads = out["input_ids"][1][mask == 0]
    assert (pads == tokenizer.pad_token_id).all()


def test_text_only_call_has_no_pixel_values(tokenizer):
    out = make_processor(tokenizer)("answer yes or no")
    assert set(out.keys()) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    "text, n_images, message",
    [
        ("<image> <image>", 1, "2 <image> placeholders but 1 images"),
        ("no placeholder", 1, "0 <image> placeholders but 1 images"),
        ("<image>", 0, "1 <image> placeholders but 0 images"),
    ],
)
def test_placeholder_image_count_mismatch_is_an_error(tokenizer, text, n_images, message):
    processor = make_processor(tokenizer)
    images = [noise(8, 8)] * n_images if n_images else None
    with pytest.raises(ValueError, match=message):
        processor(text, images=images)


def test_truncation_that_cuts_image_tokens_is_an_error(tokenizer):
    processor = make_processor(tokenizer)
    with pytest.raises(ValueError, match="max_length"):
        processor("<image> describe", images=noise(8, 8), truncation=True, max_length=3)


def test_save_and_load_round_trip_gives_identical_tensors(tokenizer, tmp_path):
    processor = make_processor(tokenizer, hi_res=True, crop_grid=(1, 2))
    texts = ["<image> what colour is the star?", "describe the picture"]
    before = processor(texts, images=[noise(37, 23)], padding_side="left")
    processor.save_pretrained(tmp_path)
    reloaded = SparseCutProcessor.from_pretrained(tmp_path)
    after = reloaded(texts, images=[noise(37, 23)], padding_side="left")
    assert type(reloaded.image_processor) is CLIPImageProcessorPil
    assert (reloaded.num_image_tokens, reloaded.hi_res, reloaded.crop_grid) == (M_V, True, (1, 2))
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_clip_336_config_gives_llava_views_and_672_crops(tokenizer):
    processor = make_processor(tokenizer, hi_res=True, side=336)
    image = noise(300, 200)
    out = processor("<image>", images=image)
    assert processor.base_size == 336
    assert out["pixel_values"].shape == (1, 5, 3, 336, 336)
    image_processor = processor.image_processor
    square = expand_to_square(image, processor.pad_fill)
    # View 0 is exactly what LLaVA-1.5 feeds CLIP: the padded square through the full processor.
    llava = image_processor(square, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(out["pixel_values"][0, 0], llava)
    # The last crop is the bottom-right quarter of the square at 672 px.
    high = square.resize((672, 672), Image.Resampling.BICUBIC).crop((336, 336, 672, 672))
    expected = image_processor(high, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(out["pixel_values"][0, 4], expected)


def test_padding_uses_the_image_mean_colour(tokenizer):
    processor = make_processor(tokenizer)
    assert processor.pad_fill == (122, 116, 104)
    out = processor("<image>", images=Image.new("RGB", (BASE, BASE // 2), (255, 255, 255)))
    # Rows above the image are the mean colour, which normalises to about zero.
    assert out["pixel_values"][0, :, :4].abs().max() < 0.02


def test_image_token_id_and_decode_delegate_to_tokenizer(tokenizer):
    processor = make_processor(tokenizer)
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>") == 4
    out = processor(["a red circle.", "<image> yes"], images=[noise(8, 8)])
    assert processor.batch_decode(out["input_ids"], skip_special_tokens=True) == ["a red circle.", "yes"]
    assert processor.decode(out["input_ids"][0], skip_special_tokens=True) == "a red circle."


def test_return_tensors_np_gives_arrays(tokenizer):
    out = make_processor(tokenizer, hi_res=True)("<image>", images=noise(8, 8), return_tensors="np")
    assert isinstance(out["input_ids"], np.ndarray)
    assert out["pixel_values"].shape == (1, 5, 3, BASE, BASE) and out["pixel_values"].dtype == np.float32


def test_add_image_token_registers_a_special_token_once():
    tokenizer = build_word_tokenizer(["red"])
    size = len(tokenizer)
    token_id = add_image_token(tokenizer, "<img>")
    assert token_id == size and len(tokenizer) == size + 1
    assert add_image_token(tokenizer, "<img>") == token_id and len(tokenizer) == size + 1
    assert tokenizer("red<img>red", add_special_tokens=False)["input_ids"].count(token_id) == 1
    assert add_image_token(tokenizer, "<image>") == 4  # already there: unchanged


def test_tokenizer_without_the_image_token_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="add_image_token"):
        SparseCutProcessor.from_parts(clip_image_processor(BASE), tokenizer, num_image_tokens=M_V, image_token="<img>")


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("num_image_tokens", {"num_image_tokens": 0}),
        ("crop_grid", {"num_image_tokens": M_V, "crop_grid": (2, 0)}),
        ("hi_res", {"num_image_tokens": M_V, "hi_res": "yes"}),
    ],
)
def test_bad_fields_are_named_in_the_error(tokenizer, field, kwargs):
    with pytest.raises(ValueError, match=field):
        SparseCutProcessor.from_parts(clip_image_processor(BASE), tokenizer, **kwargs)


def test_siglip_style_processor_takes_base_size_from_size(tokenizer):
    from transformers import SiglipImageProcessorPil

    processor = SparseCutProcessor.from_parts(
        SiglipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer, num_image_tokens=M_V, hi_res=True
    )
    out = processor("<image>", images=noise(40, 10))
    assert out["pixel_values"].shape == (1, 5, 3, 32, 32)
