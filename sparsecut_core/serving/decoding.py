"""One generation over a batch of prompts: left padding, a KV cache, per-row sampling, rows leaving early.

Written by hand rather than with `generate` because every row has its own temperature,
top_p, seed and stop conditions, and finished or cancelled rows leave the batch (their
cache rows are dropped) while the others go on. Positions follow the attention mask
(cumsum - 1), so a left-padded row sees the positions it would see alone; images add
M_v ordinary positions each (the model's rotary positions are 1-D), nothing special.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..model.modeling import SparseCutForConditionalGeneration


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt: input_ids [T] with M_v image ids per image, pixel_values [N_images, ...] or None."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])


def left_pad(prompts: list[Prompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, T_max], each prompt right-aligned (padding on the left)."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt.input_ids):] = prompt.input_ids
        mask[row, width - len(prompt.input_ids):] = 1
    return ids, mask


def next_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row from logits [B, V]: argmax at temperature 0, else nucleus sampling with the row's generator."""
    chosen = logits.argmax(-1)
    for row, (p, generator) in enumerate(zip(params, generators)):
        if p.temperature <= 0:
            continue
        probs = torch.softmax(logits[row].float() / p.temperature, -1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        chosen[row] = torch.multinomial(probs.cpu(), 1, generator=generator).to(chosen.device)[0]
    return chosen


class BatchDecoder:
    """Prefills a batch once, then yields one token per live row per `step()`; `keep()` drops rows."""

    def __init__(self, model: SparseCutForConditionalGeneration, prompts: list[Prompt], params: list[SamplingParams],
                 pad_id: int, suppress: list[int]):
        self.model, self.params, self.suppress = model, list(params), suppress
        self.generators = [_generator(p) for p in params]
        ids, mask = left_pad(prompts, pad_id)
        self.mask = mask.to(model.device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: 0.. from each row's first real token
        self.cache = DynamicCache(config=model.config.text_config)
        images = [p.pixel_values for p in prompts if p.pixel_values is not None]
        pixels = torch.cat(images).to(model.device, model.dtype) if images else None
        self._logits = self._forward(ids.to(model.device), pixels, self.positions)

    def _forward(self, ids: torch.Tensor, pixels: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, pixel_values=pixels, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()  # [B, V]
        if self.suppress:
            logits[:, self.suppress] = float("-inf")  # never emit a visual position
        return logits

    def step(self) -> list[int]:
        """The next token of every live row (in the order of the rows kept so far)."""
        tokens = next_tokens(self._logits, self.params, self.generators)
        self._pending = tokens
        return tokens.tolist()

    def advance(self) -> None:
        """Feed the tokens of the last `step()` back in (one decode forward)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.params), 1)], 1)
        last = self.positions[:, -1:] + 1  # [B, 1]
        self.positions = last
        self._logits = self._forward(self._pending[:, None], None, last)

    def keep(self, rows: list[int]) -> None:
        """Continue with these rows only (indices into the current live rows); the others' cache goes."""
        if len(rows) == len(self.params):
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self._logits, self._pending = self._logits[index], self._pending[index]
        self.params = [self.params[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]


def _generator(params: SamplingParams) -> torch.Generator | None:
    if params.temperature <= 0:
        return None
    generator = torch.Generator()  # sampling runs on CPU probabilities: the same draw on any device
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator
