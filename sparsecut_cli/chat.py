"""`sparsecut chat`: talk about an image in the terminal, answers streamed as they are generated.

The conversation loop (`chat_loop`) takes its input and output as plain callables, so
tests drive it with scripted lines; the typer command only wires it to the terminal.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from sparsecut_cli.output import console, err_console, load_model

if TYPE_CHECKING:
    from sparsecut_core.inference.chat import Chat, Sampling, StopFlag

Reader = Callable[[str], str] | Iterable[str]  # input()-like (EOFError at the end) or lines
Writer = Callable[[str], None]

PROMPT = "user> "
COMMANDS = "/image PATH (new image, history cleared), /reset, /save FILE, /exit"


@contextmanager
def ctrl_c_stops(stop: StopFlag) -> Iterator[None]:
    """While inside, Ctrl-C raises `stop` (the answer ends at the next token); a second Ctrl-C interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def answer(session: Chat, question: str, sampling: Sampling, write: Writer) -> str:
    """Stream one answer to `write`; Ctrl-C (or a KeyboardInterrupt while streaming) ends it early.

    The exchange joins the history either way, with the part of the answer generated (and shown) so far
    (unless nothing was).
    """
    from sparsecut_core.inference.chat import ChatStreamer, StopFlag

    stop = StopFlag()
    streamer = ChatStreamer(session.processor.tokenizer, on_text=write)
    try:
        with ctrl_c_stops(stop):
            text = session.ask(question, sampling, streamer=streamer, stop=stop)
    except KeyboardInterrupt:
        streamer.end()  # show the word that was still being formed, then the line break
        text = streamer.text()
        if text:  # interrupted before the first token: as if the question had not been asked
            session.add_exchange(question, text)
        stop.request()
    if stop.requested:
        write("[answer stopped]\n")
    return text


def run_command(session: Chat, line: str, write: Writer) -> bool:
    """Carry out one /command; False means the session ends. Failures are one line, the session goes on."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        write("history cleared\n")
    elif name in ("/image", "/save") and not argument:
        write(f"{name} needs a {'path or URL' if name == '/image' else 'file name'}\n")
    elif name == "/image":
        try:
            session.set_image(argument)
            write(f"image: {argument} (history cleared)\n")
        except ValueError as err:
            write(f"error: {err}\n")
    elif name == "/save":
        try:
            write(f"saved {session.save(argument)}\n")
        except (ValueError, OSError) as err:
            write(f"error: {err}\n")
    else:
        write(f"unknown command {name}; commands: {COMMANDS}\n")
    return True


def _line_reader(read: Reader) -> Callable[[str], str]:
    """An input()-like callable from either an input()-like callable or an iterable of lines."""
    if callable(read):
        return read
    lines = iter(read)

    def next_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    return next_line


def chat_loop(session: Chat, read: Reader, write: Writer, sampling: Sampling) -> None:
    """The interactive conversation: questions and /commands from `read`, everything shown to `write`.

    Ends at /exit or end of input (EOFError); Ctrl-C at the prompt only reminds how to leave.
    Errors in a turn (e.g. a prompt too long for the model) are one line and the session goes on.
    """
    next_line = _line_reader(read)
    while True:
        try:
            line = next_line(PROMPT).strip()
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(/exit or Ctrl-D to quit)\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not run_command(session, line, write):
                return
            continue
        try:
            answer(session, line, sampling, write)
        except ValueError as err:
            write(f"\nerror: {err}\n")


class _DropInt8CastNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


@contextmanager
def _quiet_int8_casts() -> Iterator[None]:
    """Drop the note bitsandbytes logs at every int8 matmul on float32 inputs (8-bit on CPU): noise mid-answer."""
    logger, note = logging.getLogger("bitsandbytes.autograd._functions"), _DropInt8CastNotes()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def _write_terminal(text: str) -> None:
    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)


def _quantize_mode(load_4bit: bool, load_8bit: bool) -> Optional[str]:
    if load_4bit and load_8bit:
        raise ValueError("choose one of --load-4bit and --load-8bit")
    return "4bit" if load_4bit else "8bit" if load_8bit else None


def chat(
    image: str = typer.Argument(..., help="image file (anything PIL opens) or http(s) URL"),
    model: Optional[Path] = typer.Option(None, help="saved model folder"),
    preset: Optional[str] = typer.Option(None, help="build this preset instead of loading a model"),
    prompt: Optional[str] = typer.Option(None, help="answer once and exit (also read from piped stdin)"),
    max_new_tokens: int = typer.Option(64, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy"),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0, help="seed for sampling (and for a preset's random weights)"),
    load_4bit: bool = typer.Option(False, "--load-4bit",
                                   help="LLM in 4-bit NF4 (bitsandbytes, double quant, bf16 compute)"),
    load_8bit: bool = typer.Option(False, "--load-8bit", help="LLM in 8-bit (bitsandbytes LLM.int8())"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    verbose: bool = typer.Option(False, "--verbose", help="report loading and peak memory (on stderr)"),
) -> None:
    """Talk about an image: once with --prompt (or piped stdin), else turn by turn.

    Commands: /image PATH, /reset, /save FILE (conversation as JSON), /exit. Ctrl-C stops an answer.
    """
    from transformers import set_seed

    from sparsecut_core.model.images import load_image
    from sparsecut_core.inference.chat import Chat, Sampling, peak_memory_bytes
    from sparsecut_core.inference.quantization import quantized_module_names, resolve_device

    if model is not None and preset is not None:
        raise ValueError("give --model or --preset, not both")
    quantize = _quantize_mode(load_4bit, load_8bit)
    target = resolve_device(device)
    picture = load_image(image)  # a missing or unreadable image fails here, before any model loads
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if prompt is not None and not prompt.strip():
        raise ValueError("no question: the prompt (or piped stdin) is empty")
    set_seed(seed)
    try:
        with _quiet_int8_casts():
            loaded, processor = load_model(model, preset, seed, device=target, quantize=quantize)
            if verbose:
                layers = (f"{len(quantized_module_names(loaded))} LLM linears in {quantize}" if quantize
                          else "no quantization")
                err_console.print(f"loaded on {target}, {loaded.dtype}, {layers}", highlight=False)
            session = Chat(loaded, processor, picture, source=image)
            sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
            if prompt is not None:
                answer(session, prompt.strip(), sampling, _write_terminal)
            else:
                console.print(f"chatting about {image}; commands: {COMMANDS}", markup=False, highlight=False)
                chat_loop(session, lambda text: console.input(text), _write_terminal, sampling)
    finally:
        if verbose:
            peak, measured = peak_memory_bytes(target)
            err_console.print(f"peak memory: {peak / 2**20:.1f} MiB ({measured})", highlight=False)
