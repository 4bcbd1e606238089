"""The frozen-tower feature cache: same numbers as the tower, the tower only over unseen images."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_SIZE, M_V, image_prompt, pad_batch, tiny_model

from sparsecut_core.model.feature_cache import VisionFeatureCache, caching_features
from sparsecut_core.model.freezing import set_trainable
from sparsecut_core.training.config import TrainConfig
from sparsecut_core.training.setup import prepare_model


def _batch(images: int, seed: int):
    rows = [image_prompt(30, 4, seed=seed + k) for k in range(images)]
    ids, mask = pad_batch(rows, "right")
    return ids, mask


class _CountingTower(torch.nn.Module):
    """Wraps a tower and counts the images it sees."""

    def __init__(self, tower):
        super().__init__()
        self.tower, self.seen = tower, 0

    def forward(self, pixel_values, **kw):
        self.seen += pixel_values.shape[0]
        return self.tower(pixel_values, **kw)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["tower"], name)


@pytest.mark.parametrize("hi_res", [False, True])
def test_cached_features_give_the_same_logits_and_skip_seen_images(hi_res):
    model = tiny_model(hi_res=hi_res)
    set_trainable(model, "finetune")
    views = 5 if hi_res else 1
    pixels = torch.randn(4, views, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    ids, mask = _batch(4, seed=0)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    model.vision_tower = tower = _CountingTower(model.vision_tower)
    model.feature_cache = VisionFeatureCache()
    with torch.no_grad():
        first = model(input_ids=ids[:2], attention_mask=mask[:2], pixel_values=pixels[:2]).logits
        # images 0 and 1 again (in another order, one of them twice) and the new images 2 and 3
        order = [1, 2, 0, 3, 1]
        again = model(input_ids=ids[order], attention_mask=mask[order], pixel_values=pixels[order]).logits
    assert tower.seen == 4 * views  # every image through the tower once
    assert (model.feature_cache.hits, model.feature_cache.misses) == (3, 4)
    torch.testing.assert_close(first, plain[:2], rtol=0, atol=1e-5)
    torch.testing.assert_close(again, plain[order], rtol=0, atol=1e-5)


def test_a_training_tower_is_never_cached(pixels):
    model = tiny_model()
    set_trainable(model, "finetune", unfreeze_vision=True)
    model.feature_cache = VisionFeatureCache()
    ids, mask = _batch(2, seed=0)
    model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).loss.backward()
    assert len(model.feature_cache) == 0
    assert model.vision_tower.embeddings.patch_embedding.weight.grad is not None


def test_gradients_reach_the_adapter_through_cached_features(pixels):
    model = tiny_model()
    set_trainable(model, "finetune")
    model.feature_cache = VisionFeatureCache()
    ids, mask = _batch(2, seed=0)
    for _ in range(2):  # the second pass reads the cache
        model.zero_grad()
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=ids).loss.backward()
        assert model.adapter.adapters[0].projector.linear_1.weight.grad.abs().sum() > 0
    assert model.feature_cache.hits == 2


def test_the_cache_stops_growing_at_its_budget(pixels):
    model = tiny_model()
    set_trainable(model, "finetune")
    per_image = len(model.config.source_layers) * M_V * model.config.vision_config.hidden_size * 4
    model.feature_cache = VisionFeatureCache(max_bytes=per_image)
    ids, mask = _batch(2, seed=0)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert len(model.feature_cache) == 1 and model.feature_cache.bytes == per_image


def test_prepare_model_caches_only_a_frozen_tower_without_dropout(tmp_path):
    config = TrainConfig(stage="finetune", output_dir=str(tmp_path), learning_rate=1e-3, global_batch_size=2,
                         cache_vision_features=True)
    assert isinstance(prepare_model(tiny_model(), config).feature_cache, VisionFeatureCache)
    unfrozen = TrainConfig(**{**config.__dict__, "unfreeze_vision": True})
    assert prepare_model(tiny_model(), unfrozen).feature_cache is None
    dropout = tiny_model()
    for layer in dropout.vision_tower.encoder.layers:
        layer.mlp.fc1 = torch.nn.Sequential(layer.mlp.fc1, torch.nn.Dropout(0.1))
    with pytest.raises(ValueError, match="drops out with p=0.1"):
        prepare_model(dropout, config)


def test_evaluation_caches_for_its_duration_only_a_model_in_eval_mode(pixels):
    model = tiny_model()  # loaded models keep requires_grad on: no gradient is taken under no_grad
    ids, mask = _batch(2, seed=0)
    with caching_features(model), torch.no_grad():
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        assert model.feature_cache.hits == 2
    assert model.feature_cache is None
    with caching_features(model.train()):
        assert model.feature_cache is None


def test_one_cache_serves_models_of_other_layers_over_the_same_tower(pixels):
    """A sweep's variants: one tower pass per image computes the union of their layers, and each model gets
    the logits it computes without the cache."""
    first = tiny_model(pattern="sparse-uniform", num_shortcuts=2)
    second = tiny_model(pattern="sparse-bottom", num_shortcuts=3)
    second.vision_tower.load_state_dict(first.vision_tower.state_dict())
    assert set(first.config.source_layers) != set(second.config.source_layers)
    ids, mask = _batch(2, seed=0)
    with torch.no_grad():
        plain = [m(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits for m in (first, second)]
    union = sorted(set(first.config.source_layers) | set(second.config.source_layers))
    cache = VisionFeatureCache(layers=union)
    for model in (first, second):
        set_trainable(model, "finetune")
        cache.attach(model)
    with torch.no_grad():
        cached = [m(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits for m in (first, second)]
    assert (cache.misses, cache.hits) == (2, 2)  # the second model's images came from the first one's pass
    for got, want in zip(cached, plain):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_cache_refuses_a_model_of_another_tower():
    cache = VisionFeatureCache()
    first, other = tiny_model(seed=0), tiny_model(seed=1)
    for model in (first, other):
        set_trainable(model, "finetune")
    cache.attach(first)
    with pytest.raises(ValueError, match="another vision tower"):
        cache.attach(other)
    assert other.feature_cache is None


def test_a_float16_cache_hands_out_the_same_rounded_features_fresh_and_kept():
    """A sweep keeps the features in float16: a model sees them rounded, at its first pass as at later ones."""
    model = tiny_model()
    set_trainable(model, "finetune")
    pixels = torch.randn(3, 1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    exact = model._tower_hidden_states(pixels)
    cache = VisionFeatureCache(dtype=torch.float16)
    layers = model.config.source_layers
    fresh = cache.features(pixels[:2], model._tower_hidden_states, layers)
    again = cache.features(pixels, model._tower_hidden_states, layers)  # images 0, 1 kept, 2 new
    assert (cache.hits, cache.misses) == (2, 3)
    for i in layers:
        want = exact[i].to(torch.float16).float()
        assert fresh[i].dtype == again[i].dtype == torch.float32
        torch.testing.assert_close(again[i][:2], fresh[i], rtol=0, atol=0)  # kept = as first handed out
        torch.testing.assert_close(fresh[i], fresh[i].half().float(), rtol=0, atol=0)  # float16 values
        torch.testing.assert_close(again[i], want, rtol=2e-3, atol=1e-5)  # the tower's, rounded
    # half the bytes of float32 features
    assert cache.bytes == sum(exact[i][:3].numel() for i in layers) * 2


def test_a_float16_cache_refuses_features_it_cannot_hold():
    cache = VisionFeatureCache(dtype=torch.float16)
    huge = lambda pixels, layers: {i: torch.full((pixels.shape[0], 1, 4, 8), 1e6) for i in layers}  # noqa: E731
    with pytest.raises(ValueError, match="vision layer 2's features overflow the feature cache's torch.float16"):
        cache.features(torch.zeros(1, 1, 3, 8, 8), huge, [2])
