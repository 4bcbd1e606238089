"""Answering questions about an image with a saved or freshly built model.

A `Chat` holds one image and the conversation so far, rendered with the model's
conversation template on every turn. Answers can stream through any transformers
streamer (`ChatStreamer` hands decoded text to a callback) and stop early when a
`StopFlag` is raised, e.g. from a Ctrl-C handler. The image token is suppressed
during generation so that an untrained model cannot emit it.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..data.templates import IMAGE_PLACEHOLDER, Turn, render_prompt
from ..files import write_json_atomic
from ..model.images import load_image
from ..model.modeling import SparseCutForConditionalGeneration
from ..model.processing import ImageLike, SparseCutProcessor


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


class StopFlag(StoppingCriteria):
    """Ends generation at the next token once `request()` was called (a Ctrl-C handler calls it)."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        # one verdict per sequence: [B]
        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)


class ChatStreamer(TextStreamer):
    """Hands the answer's text to `on_text` word by word as it is generated (the prompt is skipped).

    TextStreamer decides when text is final (whole words, newlines); `on_text` receives each
    piece and, at the end, the rest followed by a newline. `text()` is the answer so far,
    also after an interruption.
    """

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.answer_ids: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.answer_ids.extend(value.reshape(-1).tolist())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text or stream_end:  # TextStreamer also reports empty pieces while a word is incomplete
            self.on_text(text + "\n" if stream_end else text)

    def text(self) -> str:
        return self.tokenizer.decode(self.answer_ids, skip_special_tokens=True).strip()


@dataclass
class Chat:
    """A conversation about one image; the first human turn carries the image placeholder.

    `image` is a path, URL or PIL image and is loaded (RGB, EXIF-upright) once, here;
    `source` names it in the saved conversation (the path or URL when one was given).
    """

    model: SparseCutForConditionalGeneration
    processor: SparseCutProcessor
    image: ImageLike
    turns: list[Turn] = field(default_factory=list)
    source: str | None = None

    def __post_init__(self) -> None:
        if self.source is None and not isinstance(self.image, Image.Image):
            self.source = str(self.image)
        self.image = load_image(self.image)

    def set_image(self, image: ImageLike) -> None:
        """Talk about another image from now on; the history is cleared (it was about the old one)."""
        loaded = load_image(image)  # fails before anything changes
        self.image, self.source = loaded, None if isinstance(image, Image.Image) else str(image)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation, keep the image."""
        self.turns.clear()

    def _human_turn(self, question: str) -> Turn:
        return Turn("human", question if self.turns else f"{IMAGE_PLACEHOLDER}\n{question}")

    def prompt(self, question: str) -> str:
        turns = [*self.turns, self._human_turn(question)]
        return render_prompt(self.processor.template, turns, tokenizer=self.processor.tokenizer,
                             eos=self.processor.tokenizer.eos_token or "</s>")

    def add_exchange(self, question: str, answer: str) -> None:
        """Record a question and its answer (e.g. the part of an answer shown before an interruption)."""
        self.turns += [self._human_turn(question), Turn("gpt", answer)]

    @torch.inference_mode()
    def ask(
        self, question: str, sampling: Sampling = Sampling(), streamer: Any = None, stop: StopFlag | None = None
    ) -> str:
        """The model's answer to `question` given the history; the exchange joins the history.

        A raised `stop` ends the answer early; what was generated until then is the answer.
        """
        prompt = self.prompt(question)
        batch = self.processor(prompt, [self.image]).to(self.model.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        output = self.model.generate(
            **batch,
            **sampling.generate_kwargs(),
            suppress_tokens=[self.model.config.image_token_id],  # never emit a visual position
            stopping_criteria=StoppingCriteriaList([stop] if stop is not None else []),
            streamer=streamer,
        )
        answer = self.processor.decode(output[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.add_exchange(question, answer)
        return answer

    def to_record(self) -> dict[str, Any]:
        """The conversation in LLaVA's data format: {"image", "conversations": [{"from", "value"}]}."""
        return {
            "image": self.source,
            "template": self.processor.template,
            "conversations": [{"from": turn.role, "value": turn.text} for turn in self.turns],
        }

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON atomically (a reader never sees a half-written file)."""
        return write_json_atomic(Path(path), self.to_record())


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Peak memory so far and what was measured: CUDA's max allocated, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss if sys.platform == "darwin" else rss * 1024), "process max RSS"
