"""A row's answer as text while its tokens arrive: the new part to stream, and stop strings.

Text is decoded from all the answer's tokens each time (a token's text can depend on its
neighbours, and a UTF-8 character can span tokens), and what could still turn out to be
the start of a stop string is held back, so a stream never shows text the final answer lacks.
"""

from __future__ import annotations

from typing import Any


class AnswerText:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # the answer so far (cut at a stop string once one appeared)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def add(self, token: int) -> None:
        """Take one more token; `stopped` tells whether a stop string has now appeared."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text

    def delta(self, final: bool = False) -> str:
        """The text not handed out yet that is certain to stay (all of it when `final`)."""
        end = len(self.text) if final or self.stopped else len(self.text) - self._held_back()
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    def _held_back(self) -> int:
        """Characters at the end that may change: an incomplete character, or a prefix of a stop string."""
        if self.text.endswith("\ufffd"):
            return len(self.text) - len(self.text.rstrip("\ufffd"))
        held = 0
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        return held
