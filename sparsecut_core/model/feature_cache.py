"""Frozen-tower features kept per image, so that each image passes the vision tower once per run.

With the tower frozen (SPEC's recipe in both stages) its hidden states depend on
the pixels alone, yet a run of several epochs, or an evaluation that answers
many questions about one image, recomputes them at every step. The cache keys
every image (all its views) by a digest of its pixel values and keeps the
source layers' hidden states of the images it has seen; a batch runs the tower
over its new images only. It holds tensors, never touches files, and is used
only while no tower parameter trains.

One cache can serve several models that share a frozen tower (a sweep's variants):
it then computes the union of their source layers (`layers`) at every tower pass
and refuses a model whose tower weights differ from the first one it served.
Such a cache can keep its features in a narrower dtype (`dtype`, e.g. float16: half
the memory of float32); every feature it hands out, new or kept, is then rounded
to that dtype, so a model sees the same numbers at its first epoch and its last.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence

import torch

# (pixels [N, views, 3, H, W], layers) -> {layer: [N, views, M, D]}
TowerFn = Callable[[torch.Tensor, Sequence[int]], dict[int, torch.Tensor]]


def image_digest(pixels: torch.Tensor) -> bytes:
    """A digest of one image's pixel values (all views), its dtype and shape included."""
    data = pixels.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{data.dtype}{tuple(data.shape)}".encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.dtype == torch.bfloat16 else data.numpy().tobytes())
    return h.digest()


def tower_digest(tower: torch.nn.Module) -> bytes:
    """A digest of a tower's weights and buffers (names, dtypes, shapes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in tower.state_dict().items():
        h.update(name.encode())
        h.update(image_digest(tensor))
    return h.digest()


class VisionFeatureCache:
    """Source-layer hidden states of the images seen so far, up to `max_bytes` (new images beyond it are
    computed as usual and not kept). `layers` are computed at every tower pass besides the ones asked for:
    the union of the layers of every model this cache serves. `dtype`: the features are kept (and handed
    out, cast back to the tower's dtype) rounded to it; None keeps them as computed."""

    def __init__(self, max_bytes: int = 4 << 30, layers: Sequence[int] = (), dtype: torch.dtype | None = None):
        self.max_bytes = max_bytes
        self.layers = tuple(sorted(set(layers)))
        self.dtype = dtype
        self.computed_dtype: torch.dtype | None = None  # the tower's output dtype, from its first pass
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.seconds = 0.0  # spent in the tower
        self.tower: bytes | None = None  # digest of the tower it serves, once attached
        self.tally: set[bytes] | None = None  # when a set: collects the digest of every image asked for
        self._store: dict[bytes, dict[int, torch.Tensor]] = {}

    def attach(self, model: torch.nn.Module) -> None:
        """Serve `model` (its tower frozen): refused for a tower whose weights differ from the first one's."""
        self.check_tower(model.vision_tower)
        digest = tower_digest(model.vision_tower)
        if self.tower is None:
            self.tower = digest
        elif digest != self.tower:
            raise ValueError("this feature cache holds another vision tower's features: the towers' weights differ")
        model.feature_cache = self

    @staticmethod
    def check_tower(tower: torch.nn.Module) -> None:
        """Raises unless the tower's features are a function of the pixels alone, in train mode too."""
        for name, module in tower.named_modules():
            if isinstance(module, torch.nn.Dropout) and module.p > 0:
                raise ValueError(f"cannot cache vision features: the tower's {name} drops out with p={module.p}")
            if getattr(module, "drop_prob", 0.0):  # DINOv2's stochastic depth
                raise ValueError(f"cannot cache vision features: the tower's {name} has drop_path {module.drop_prob}")
        if any(p.requires_grad for p in tower.parameters()):
            raise ValueError("cannot cache vision features of a tower that trains (unfreeze_vision is on)")

    def __len__(self) -> int:
        return len(self._store)

    def features(self, pixels: torch.Tensor, tower: TowerFn, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """{layer: [N, views, M, D]} of `layers` for `pixels` [N, views, 3, H, W], running `tower` over the
        images not seen yet (or seen without one of these layers) only."""
        wanted = tuple(layers)
        keys = [image_digest(image) for image in pixels]
        if self.tally is not None:
            self.tally.update(keys)
        unseen: dict[bytes, int] = {}  # key -> its first row in the batch
        for row, key in enumerate(keys):
            stored = self._store.get(key)
            if (stored is None or any(i not in stored for i in wanted)) and key not in unseen:
                unseen[key] = row
        fresh: dict[bytes, dict[int, torch.Tensor]] = {}
        if unseen:
            rows = list(unseen.values())
            tick = time.perf_counter()
            computed = tower(pixels[rows], sorted(set(wanted) | set(self.layers)))
            self.seconds += time.perf_counter() - tick
            self.computed_dtype = next(iter(computed.values())).dtype
            for n, key in enumerate(unseen):
                fresh[key] = {layer: self._kept(layer, h[n]) for layer, h in computed.items()}
        self.misses += len(unseen)
        self.hits += len(keys) - len(unseen)
        for key, feats in fresh.items():
            size = sum(t.numel() * t.element_size() for t in feats.values())
            old = self._store.pop(key, None)
            if old is not None:
                self.bytes -= sum(t.numel() * t.element_size() for t in old.values())
            if self.bytes + size <= self.max_bytes:
                self._store[key] = feats
                self.bytes += size
        by_key = {**self._store, **fresh}
        out = {layer: torch.stack([by_key[key][layer] for key in keys]) for layer in wanted}
        if self.dtype is not None:
            out = {layer: h.to(self.computed_dtype) for layer, h in out.items()}
        return out

    def _kept(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """One image's features of one layer as the cache keeps them (a copy, in `dtype` when set)."""
        if self.dtype is None:
            return features.clone()
        kept = features.to(self.dtype, copy=True)
        if not torch.isfinite(kept).all():
            raise ValueError(f"vision layer {layer}'s features overflow the feature cache's {self.dtype} "
                             f"(largest magnitude {features.abs().max().item():.4g}): keep them in float32")
        return kept


class SharedFeatureCaches:
    """A VisionFeatureCache per distinct frozen tower, for runs that build their models one after another
    (a sweep): runs over the same tower weights share one; `max_bytes` bounds them all together, and each
    keeps its features in `dtype` (VisionFeatureCache)."""

    def __init__(self, max_bytes: int = 4 << 30, layers: Sequence[int] = (), dtype: torch.dtype | None = None):
        self.max_bytes, self.layers, self.dtype = max_bytes, tuple(layers), dtype
        self.caches: dict[bytes, VisionFeatureCache] = {}
        self._tally: set[bytes] | None = None

    def attach(self, model: torch.nn.Module) -> None:
        VisionFeatureCache.check_tower(model.vision_tower)
        digest = tower_digest(model.vision_tower)
        if digest not in self.caches:
            used = sum(c.bytes for c in self.caches.values())
            cache = self.caches[digest] = VisionFeatureCache(max(0, self.max_bytes - used), self.layers, self.dtype)
            cache.tally = self._tally
        self.caches[digest].attach(model)

    def start_tally(self) -> None:
        """From now on, collect the images asked for (`tallied`): one run's, to tell what sharing saved it."""
        self._tally = set()
        for cache in self.caches.values():
            cache.tally = self._tally

    @property
    def tallied(self) -> int:
        return len(self._tally or ())

    @property
    def misses(self) -> int:
        return sum(c.misses for c in self.caches.values())

    @property
    def hits(self) -> int:
        return sum(c.hits for c in self.caches.values())

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.caches.values())


@contextlib.contextmanager
def caching_features(model: torch.nn.Module, max_bytes: int = 1 << 30) -> Iterator[None]:
    """Caches the tower's features while the block runs, for a model in eval mode without one already
    (an evaluation with image ablation asks about every image more than once)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    if getattr(base, "feature_cache", False) is not None or base.training:
        yield
        return
    base.feature_cache = VisionFeatureCache(max_bytes)
    try:
        yield
    finally:
        base.feature_cache = None
