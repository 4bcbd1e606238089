"""Conversation templates: how a dialogue becomes the LLM's prompt text.

`vicuna_v1` and `plain` are LLaVA-1.5's (`conv_vicuna_v1`, `conv_llava_plain`);
`chat_template` defers to the tokenizer's own template (Qwen2.5, Phi-3, SmolLM2).
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES = ("vicuna_v1", "plain", "chat_template")
IMAGE_PLACEHOLDER = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class Turn:
    role: str  # "human" or "gpt" (LLaVA's data format)
    text: str


def _check(template: str, turns: list[Turn]) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    for k, turn in enumerate(turns):
        expected = "human" if k % 2 == 0 else "gpt"
        if turn.role != expected:
            raise ValueError(f"turn {k}: expected a {expected!r} turn, got {turn.role!r}")


def render_prompt(template: str, turns: list[Turn], tokenizer=None, eos: str = "</s>") -> str:
    """The prompt text for `turns`; ending on a human turn leaves the assistant's reply open.

    vicuna_v1: "SYSTEM USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:" (LLaVA's sep " ", sep2 eos).
    plain: the human turn's text (the image) then the caption, for pretraining.
    """
    _check(template, turns)
    if template == "plain":
        return "".join(turn.text for turn in turns)
    if template == "chat_template":
        if tokenizer is None or tokenizer.chat_template is None:
            raise ValueError("template 'chat_template' needs a tokenizer that has a chat template")
        messages = [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns]
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=turns[-1].role == "human"
        )
    parts = [VICUNA_SYSTEM + " "]
    for turn in turns:
        if turn.role == "human":
            parts.append(f"USER: {turn.text} ")
        else:
            parts.append(f"ASSISTANT: {turn.text}{eos}")
    if turns[-1].role == "human":
        parts.append("ASSISTANT:")
    return "".join(parts)
