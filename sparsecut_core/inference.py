"""Answering questions about an image with a saved or freshly built model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .images import load_image
from .modeling import SparseCutForConditionalGeneration
from .processing import SparseCutProcessor
from .templates import IMAGE_PLACEHOLDER, Turn, render_prompt


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None
) -> tuple[SparseCutForConditionalGeneration, SparseCutProcessor]:
    """A model and processor saved together with `save_pretrained` in one folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved sparsecut model (no config.json)")
    model = SparseCutForConditionalGeneration.from_pretrained(path, dtype=dtype)
    return model.eval(), SparseCutProcessor.from_pretrained(path)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return dict(max_new_tokens=self.max_new_tokens, do_sample=False)
        return dict(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature,
                    top_p=self.top_p)


@dataclass
class Chat:
    """A conversation about one image; the first human turn carries the image placeholder."""

    model: SparseCutForConditionalGeneration
    processor: SparseCutProcessor
    image: object
    turns: list[Turn] = field(default_factory=list)

    def _human_turn(self, question: str) -> Turn:
        return Turn("human", question if self.turns else f"{IMAGE_PLACEHOLDER}\n{question}")

    def prompt(self, question: str) -> str:
        turns = [*self.turns, self._human_turn(question)]
        return render_prompt(self.processor.template, turns, tokenizer=self.processor.tokenizer,
                             eos=self.processor.tokenizer.eos_token or "</s>")

    @torch.inference_mode()
    def ask(self, question: str, sampling: Sampling = Sampling(), streamer=None) -> str:
        prompt = self.prompt(question)
        batch = self.processor(prompt, [load_image(self.image)]).to(self.model.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**batch, **sampling.generate_kwargs(), streamer=streamer)
        answer = self.processor.decode(output[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.turns += [self._human_turn(question), Turn("gpt", answer)]
        return answer
