"""Token ids and labels for a training dialogue: loss only on the assistant's turns.

The prompt is rendered as text with the character spans of every assistant reply
(its answer and end-of-turn token), tokenized once with offsets, and a token is a
target iff it lies inside a reply span. LLaVA instead re-tokenizes each round and
counts tokens, which drifts silently when a tokenizer merges across the boundary
(its "tokenization mismatch" warning); here a token straddling a boundary, or a
reply left with no token of its own, is a `TokenizationMismatch` naming the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .templates import Turn, render_prompt

IGNORE_INDEX = -100  # the label of tokens without loss (PyTorch's cross-entropy default)


class TokenizationMismatch(ValueError):
    """The template's reply boundaries do not fall between tokens."""


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside assistant replies


def render_with_targets(
    template: str, turns: list[Turn], tokenizer: PreTrainedTokenizerBase | None = None, eos: str = "</s>"
) -> tuple[str, list[tuple[int, int]]]:
    """The dialogue's full text and the [start, end) character spans that carry loss.

    vicuna_v1: each "a</s>" after "ASSISTANT: " (LLaVA's masking). plain: the caption.
    chat_template: what rendering through reply k adds to the prompt that ends at human
    turn k with the generation prompt, without trailing whitespace (the reply and its
    end-of-turn token, e.g. "Paris.<|im_end|>").
    """
    if not turns or turns[-1].role != "gpt":
        raise ValueError("a training dialogue must end with an assistant ('gpt') turn")
    text = render_prompt(template, turns, tokenizer, eos)
    if template == "plain":
        prompt = render_prompt(template, turns[:-1], tokenizer, eos) if len(turns) > 1 else ""
        return text, [(len(prompt), len(text))]
    spans = []
    for k in range(1, len(turns), 2):
        prompt = render_prompt(template, turns[:k], tokenizer, eos)
        upto = render_prompt(template, turns[: k + 1], tokenizer, eos)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise TokenizationMismatch(
                f"template {template!r}: the rendering of turn {k} does not extend the prompt before it"
            )
        end = len(upto.rstrip()) if template == "chat_template" else len(upto)
        spans.append((len(prompt), end))
    return text, spans


def encode_dialogue(
    template: str,
    turns: list[Turn],
    tokenizer: PreTrainedTokenizerBase,
    *,
    eos: str | None = None,
    max_length: int | None = None,
) -> Encoded:
    """input_ids and labels of a dialogue, truncated on the right to `max_length`."""
    text, spans = render_with_targets(template, turns, tokenizer, eos or tokenizer.eos_token or "</s>")
    # Chat templates write their own special tokens (BOS included); LLaVA's templates rely on the tokenizer's.
    tokens = tokenizer(text, add_special_tokens=template != "chat_template", return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(tokens["input_ids"])
    covered = [0] * len(spans)
    for t, ((start, end), token_id) in enumerate(zip(tokens["offset_mapping"], tokens["input_ids"])):
        if start == end:  # added by the post-processor (BOS): no text, no loss
            continue
        for s, (lo, hi) in enumerate(spans):
            if lo <= start and end <= hi:
                labels[t] = token_id
                covered[s] += 1
            elif start < lo < end or start < hi < end:
                raise TokenizationMismatch(
                    f"token {text[start:end]!r} straddles the boundary of reply {s + 1}: "
                    f"the template and the tokenizer disagree"
                )
    if not all(covered):
        raise TokenizationMismatch(f"reply {covered.index(0) + 1} got no tokens of its own")
    if max_length is not None:
        return Encoded(tokens["input_ids"][:max_length], labels[:max_length])
    return Encoded(list(tokens["input_ids"]), labels)


__all__ = ["IGNORE_INDEX", "Encoded", "TokenizationMismatch", "encode_dialogue", "render_with_targets"]
