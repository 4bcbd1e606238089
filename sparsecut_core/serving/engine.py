"""The request queue and its worker: requests that wait while the model is busy run as one batch.

`submit` puts a request in a bounded queue (QueueFull when it is full); one worker thread
takes up to `max_batch_size` waiting requests, generates for them together (decoding.py)
and reports each row's text as it comes through the request's `on_event` callback
(called from the worker thread: the caller hands it on to its own loop). A cancelled
request (its client went away) leaves the queue at once, or the running batch at the
next token; a request past its deadline ends with a Failed event of status 504.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model.modeling import SparseCutForConditionalGeneration
from ..model.processing import SparseCutProcessor
from .decoding import BatchDecoder, Prompt, SamplingParams
from .text import AnswerText


class QueueFull(RuntimeError):
    """The bounded queue holds `max_queue` waiting requests already."""


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    status: int
    message: str
    kind: str  # OpenAI's error type, e.g. "timeout_error"


Event = Delta | Finished | Failed

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    prompt: Prompt
    params: SamplingParams
    on_event: Callable[[Event], None]
    deadline: float | None = None  # time.monotonic() past which it fails; set by submit from the engine's timeout
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: bool = False

    def emit(self, event: Event) -> None:
        if self.done:
            return
        self.done = isinstance(event, (Finished, Failed))
        try:
            self.on_event(event)
        except Exception:  # the receiver is gone (its event loop closed): nothing to tell
            pass


class Engine:
    def __init__(self, model: SparseCutForConditionalGeneration, processor: SparseCutProcessor, *,
                 max_batch_size: int = 8, max_queue: int = 64, timeout_s: float | None = 300.0):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.model, self.processor = model, processor
        self.max_batch_size, self.max_queue, self.timeout_s = max_batch_size, max_queue, timeout_s
        tokenizer = processor.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        self.eos_ids = _eos_ids(model, tokenizer)
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # the size of every batch run so far (what batching did)

    # --- the caller's side ---
    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting); retry later")
            if request.deadline is None and self.timeout_s is not None:
                request.deadline = time.monotonic() + self.timeout_s
            self._waiting.append(request)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """The client went away: drop it from the queue now, or from its batch at the next token."""
        request.cancelled.set()
        with self._cond:
            if request in self._waiting:
                self._waiting.remove(request)
                request.done = True

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": len(self._waiting), "running": len(self._running)}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sparsecut-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for request in list(self._waiting):
            request.emit(Failed(503, "the server is shutting down", "server_error"))
        self._waiting.clear()

    # --- the worker ---
    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._generate(batch)
            except Exception as err:  # one bad batch must not stop the server
                reason = (str(err).splitlines() or [""])[0] or type(err).__name__
                for request in batch:
                    request.emit(Failed(500, f"generation failed: {reason}", "server_error"))
            finally:
                with self._cond:
                    self._running = []

    def _take(self) -> list[Request] | None:
        """Wait for work; then every waiting request (up to max_batch_size), skipping expired ones."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._waiting and len(self._running) < self.max_batch_size:
                    request = self._waiting.popleft()
                    if request.deadline is not None and now > request.deadline:
                        request.emit(_timeout(self.timeout_s))
                    elif not request.cancelled.is_set():
                        self._running.append(request)
                if self._running:
                    return list(self._running)
                self._cond.wait()

    @torch.inference_mode()
    def _generate(self, batch: list[Request]) -> None:
        self.batch_sizes.append(len(batch))
        decoder = BatchDecoder(self.model, [r.prompt for r in batch], [r.params for r in batch], self.pad_id,
                               suppress=[self.model.config.image_token_id])
        live = [(r, AnswerText(self.processor.tokenizer, r.params.stop)) for r in batch]
        while live:
            tokens = decoder.step()
            now, kept = time.monotonic(), []
            for row, ((request, answer), token) in enumerate(zip(live, tokens)):
                if self._row_goes_on(request, answer, token, now):
                    kept.append(row)
            live = [live[row] for row in kept]
            if live:
                decoder.keep(kept)
                decoder.advance()

    def _row_goes_on(self, request: Request, answer: AnswerText, token: int, now: float) -> bool:
        if request.cancelled.is_set():
            return False
        if request.deadline is not None and now > request.deadline:
            request.emit(_timeout(self.timeout_s))
            return False
        reason = "stop" if token in self.eos_ids else None
        if reason is None:
            answer.add(token)
            if answer.stopped:
                reason = "stop"
            elif len(answer.ids) >= request.params.max_tokens:
                reason = "length"
        piece = answer.delta(final=reason is not None)
        if piece:
            request.emit(Delta(piece))
        if reason is None:
            return True
        generated = len(answer.ids) + (token in self.eos_ids)  # the end-of-sequence token counts, as it was generated
        request.emit(Finished(answer.text, reason, len(request.prompt.input_ids), generated))
        return False


def _timeout(timeout_s: float | None) -> Failed:
    return Failed(504, f"the request took longer than the server's timeout ({timeout_s:g} s)", "timeout_error")


def _eos_ids(model: SparseCutForConditionalGeneration, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the generation config's (one or a list) and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
