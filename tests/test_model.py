"""Behaviour of the SparseCut forward: shapes, where shortcuts act, cache, saving, training stages."""

import pytest
import torch
from transformers import (
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    SiglipVisionConfig,
)

from sparsecut_core.model.modeling import SparseCutForConditionalGeneration

from conftest import IMAGE_SIZE, IMAGE_TOKEN, M_V, image_prompt, pad_batch, tiny_model, tiny_vision_config


def _two_samples(side="right"):
    return pad_batch([image_prompt(30, image_at=4, seed=1), image_prompt(26, image_at=2, seed=2)], side)


def test_hi_res_keeps_the_llm_sequence_length(hires_pixels):
    model = tiny_model(hi_res=True)
    input_ids, attention_mask = _two_samples()
    out = model(input_ids=input_ids, pixel_values=hires_pixels, attention_mask=attention_mask)
    assert out.logits.shape == (2, input_ids.shape[1], 100)
    assert (input_ids == IMAGE_TOKEN).sum(1).tolist() == [M_V, M_V]  # one view's worth, not five


def test_hi_res_features_come_from_all_crops(hires_pixels):
    model = tiny_model(hi_res=True)
    low, high = model.vision_features(hires_pixels)
    assert low[3].shape == (2, M_V, 32) and high[3].shape == (2, 4 * M_V, 32)
    z = model.adapter(low, high)
    assert sorted(z) == [1, 3] and z[1][0].shape == (2, M_V, 48)


def test_wrong_number_of_views_is_a_clear_error(pixels):
    model = tiny_model(hi_res=True)
    input_ids, attention_mask = _two_samples()
    with pytest.raises(ValueError, match="1 views per image, the model expects 5"):
        model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask)


def test_image_token_count_mismatch_is_a_clear_error(pixels):
    input_ids, attention_mask = _two_samples()
    with pytest.raises(ValueError, match="hold 32 image tokens but pixel_values give 1 images"):
        tiny_model()(input_ids=input_ids, pixel_values=pixels[:1], attention_mask=attention_mask)


def test_shortcuts_change_only_visual_and_later_positions(pixels):
    input_ids, attention_mask = _two_samples()
    llava_like = tiny_model(pattern="llava", seed=0)
    sparse = tiny_model(pattern="sparse-uniform", num_shortcuts=2, seed=0)  # same weights, one more shortcut
    with torch.no_grad():
        a = llava_like(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
        b = sparse(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
    diff = (a - b).abs().amax(-1)  # [B, T]
    assert diff[0, :4].max() == 0 and diff[1, :2].max() == 0  # before the image: untouched
    assert diff[0, 4:].min() > 0 and diff[1, 2:26].min() > 0  # image and everything after it


def test_the_image_reaches_the_answer_positions(pixels):
    model = tiny_model()
    input_ids, attention_mask = _two_samples()
    with torch.no_grad():
        a = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
        b = model(input_ids=input_ids, pixel_values=pixels.flip(0), attention_mask=attention_mask).logits
    assert (a[:, -1] - b[:, -1]).abs().max() > 0


def test_text_only_samples_pass_through_the_bare_llm(pixels):
    model = tiny_model()
    text = image_prompt(20, None, seed=5)[None]
    with torch.no_grad():
        bare = model.language_model(input_ids=text).logits
        got = model(input_ids=text).logits
        # and inside a mixed batch with an image sample, right-padded
        ids, mask = pad_batch([image_prompt(30, image_at=4, seed=1), text[0]], "right")
        mixed = model(input_ids=ids, pixel_values=pixels[:1], attention_mask=mask).logits
    assert torch.equal(got, bare)
    assert (mixed[1, :20] - bare[0]).abs().max() < 1e-5


@pytest.mark.parametrize("hi_res", [False, True])
def test_generation_with_cache_equals_generation_without(hi_res, pixels, hires_pixels):
    model = tiny_model(hi_res=hi_res)
    input_ids, attention_mask = _two_samples("left")
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=hires_pixels if hi_res else pixels,
                  max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(**kwargs, use_cache=True)
    without = model.generate(**kwargs, use_cache=False)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("sharing", ["shared", "per-shortcut"])
def test_save_and_load_round_trip_is_exact(sharing, tmp_path, hires_pixels):
    model = tiny_model(hi_res=True, adapter_sharing=sharing)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = SparseCutForConditionalGeneration.from_pretrained(tmp_path).eval()
    input_ids, attention_mask = _two_samples()
    with torch.no_grad():
        a = model(input_ids=input_ids, pixel_values=hires_pixels, attention_mask=attention_mask).logits
        b = loaded(input_ids=input_ids, pixel_values=hires_pixels, attention_mask=attention_mask).logits
    assert torch.equal(a, b)
    assert len(loaded.adapter.adapters) == (1 if sharing == "shared" else 2)


def _loss_grads(model, pixels):
    input_ids, attention_mask = _two_samples()
    labels = input_ids.masked_fill(input_ids == IMAGE_TOKEN, -100)
    model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask, labels=labels).loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "stage, unfreeze, parts",
    [("pretrain", False, {"adapter"}), ("finetune", False, {"adapter", "language_model"}),
     ("finetune", True, {"adapter", "language_model", "vision_tower"})],
)
def test_gradients_reach_exactly_the_trainable_parts(stage, unfreeze, parts, hires_pixels):
    model = tiny_model(hi_res=True).train()
    names = model.set_trainable(stage, unfreeze_vision=unfreeze)
    grads = _loss_grads(model, hires_pixels)
    got = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    # each trainable part gets gradient; nothing else does
    assert {n.split(".")[0] for n in got} == parts
    assert got <= set(names)
    assert all(grads[n] is None for n in grads if n.split(".")[0] not in parts)


def test_gradient_checkpointing_gives_the_same_gradients(hires_pixels):
    plain = tiny_model(hi_res=True).train()
    plain.set_trainable("finetune")
    checkpointed = tiny_model(hi_res=True).train()
    checkpointed.set_trainable("finetune")
    checkpointed.gradient_checkpointing_enable()
    a, b = _loss_grads(plain, hires_pixels), _loss_grads(checkpointed, hires_pixels)
    for name, grad in a.items():
        if grad is not None:
            assert torch.allclose(grad, b[name], atol=1e-6), name


def test_bf16_forward_and_backward_run(hires_pixels):
    model = tiny_model(hi_res=True).to(torch.bfloat16).train()
    model.set_trainable("finetune")
    grads = _loss_grads(model, hires_pixels)
    assert grads["adapter.adapters.0.projector.linear_1.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "text_config",
    [
        Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=100, use_sliding_window=True, sliding_window=8,
                    max_window_layers=2),
        Phi3Config(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        MistralConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, sliding_window=8),
    ],
    ids=["qwen2", "phi3", "mistral"],
)
def test_other_llm_families_are_wrapped(text_config, pixels):
    model = tiny_model(text_config=text_config)
    input_ids, attention_mask = _two_samples("left")
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask).logits
        text = model(input_ids=input_ids[:, :4]).logits
        bare = model.language_model(input_ids=input_ids[:, :4]).logits
    assert torch.isfinite(out).all() and torch.equal(text, bare)
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels,
                               max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, input_ids.shape[1] + 3)


def test_siglip_tower_keeps_every_patch(hires_pixels):
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=7)
    model = tiny_model(vision_config=vision, hi_res=True)
    assert model.config.num_image_tokens == M_V  # no CLS token to drop
    input_ids, attention_mask = _two_samples()
    out = model(input_ids=input_ids, pixel_values=hires_pixels, attention_mask=attention_mask)
    assert torch.isfinite(out.logits).all()


def test_llm_without_reachable_decoder_layers_is_rejected():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="cannot find the decoder layers of GPT2LMHeadModel"):
        tiny_model(text_config=GPT2Config(n_embd=48, n_layer=4, n_head=4, vocab_size=100))


def test_from_pretrained_parts_loads_both_checkpoints(tmp_path, pixels):
    from transformers import CLIPConfig, CLIPModel, LlamaForCausalLM

    from conftest import tiny_text_config

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(vision_config=tiny_vision_config().to_dict(),
                                text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, vocab_size=50)))
    clip.save_pretrained(tmp_path / "clip")
    llm = LlamaForCausalLM(tiny_text_config())
    llm.save_pretrained(tmp_path / "llm")
    model = SparseCutForConditionalGeneration.from_pretrained_parts(
        tmp_path / "clip", tmp_path / "llm", image_token_id=IMAGE_TOKEN, pattern="sparse-uniform", num_shortcuts=2)
    vision_weight = model.vision_tower.state_dict()["embeddings.patch_embedding.weight"]
    assert torch.equal(vision_weight, clip.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(model.language_model.lm_head.weight, llm.lm_head.weight)
    text = image_prompt(10, None)[None]
    with torch.no_grad():
        assert torch.equal(model(input_ids=text).logits, llm(input_ids=text).logits)


def test_the_kv_cache_is_handed_on_under_the_name_the_llm_takes():
    """transformers >= 5.24 names it `cache` (`past_key_values` deprecated); earlier 5.x only `past_key_values`."""
    from torch import nn

    from sparsecut_core.model.modeling import _cache_kwarg

    class Old(nn.Module):
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class New(nn.Module):
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    marker = object()
    assert _cache_kwarg(Old(), marker) == {"past_key_values": marker}
    assert _cache_kwarg(New(), marker) == {"cache": marker}
    assert _cache_kwarg(New(), None) == {}


@pytest.mark.parametrize("hi_res", [False, True])
def test_adapter_input_norm_makes_the_adapter_blind_to_each_layers_feature_scale(hi_res):
    """With `adapter_input_norm`, a source layer whose features are ten times smaller (DINOv2's shallow
    layers) reaches the LLM as its deep layers do; without it, the adapter's output scales with them."""
    torch.manual_seed(0)
    low = {i: torch.randn(2, M_V, 32) for i in (1, 2)}
    high = {i: torch.randn(2, 4 * M_V, 32) for i in (1, 2)} if hi_res else None
    shrunk_low = {i: 0.1 * x for i, x in low.items()}
    shrunk_high = None if high is None else {i: 0.1 * x for i, x in high.items()}
    for normed in (True, False):
        adapter = tiny_model(pattern=[[2, 1], [1, 2]], hi_res=hi_res, adapter_input_norm=normed).adapter
        with torch.no_grad():
            z, z_shrunk = adapter(low, high), adapter(shrunk_low, shrunk_high)
        same = all(torch.allclose(a, b, atol=1e-4) for j in z for a, b in zip(z[j], z_shrunk[j]))
        assert same == normed


def test_fusion_block_starts_as_the_identity():
    """SPEC's adapter block adds cross-attention on a residual; a fresh model starts with that attention off, so
    each Z_i is the projector of the low-res features alone (the attention's output projection is zero)."""
    model = tiny_model(hi_res=True)
    adapter = model.adapter.adapters[0]
    assert not adapter.block.attn.o_proj.weight.any() and not adapter.block.attn.o_proj.bias.any()
    low, high = torch.randn(2, M_V, 32), torch.randn(2, 4 * M_V, 32)
    assert torch.equal(adapter(low, high), adapter.projector(low))
