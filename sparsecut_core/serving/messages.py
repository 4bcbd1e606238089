"""OpenAI chat messages -> the model's prompt (its conversation template, as `sparsecut chat`) and images.

A user message's images become `<image>` placeholders at the start of its text, one per
image, each followed by a newline: `sparsecut chat`'s first turn exactly. Images come as
base64 data URLs (or http(s) URLs when the server allows them), limited in bytes and pixels;
every bad input is an ApiError naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch
from PIL import Image

from ..data.templates import IMAGE_PLACEHOLDER, Turn, render_prompt
from ..model.images import is_url, load_image
from ..model.processing import SparseCutProcessor
from .decoding import Prompt, SamplingParams
from .errors import bad_request
from .schema import ChatCompletionRequest, Message

DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    max_images: int = 4  # per request
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    remote_timeout_s: float = 10.0
    default_max_tokens: int = 256  # when a request gives no max_tokens (and the context has room)
    max_stop: int = 4  # stop strings per request, as OpenAI


def _text(message: Message, param: str) -> tuple[str, list[tuple[str, str]]]:
    """The message's text and its images (url, param), in order."""
    if message.content is None:
        raise bad_request("content: expected text or a list of content parts", f"{param}.content")
    if isinstance(message.content, str):
        return message.content, []
    texts, images = [], []
    for k, part in enumerate(message.content):
        if part.type == "text":
            texts.append(part.text)
        else:
            images.append((part.image_url.url, f"{param}.content[{k}].image_url.url"))
    return "\n".join(texts), images


def conversation(messages: list[Message]) -> tuple[list[Turn], list[tuple[str, str]]]:
    """Alternating human/gpt turns (placeholders in place) and the images in prompt order."""
    turns, images = [], []
    for k, message in enumerate(messages):
        param = f"messages[{k}]"
        expected = "user" if k % 2 == 0 else "assistant"
        if message.role in ("system", "developer"):
            raise bad_request(f"{message.role} messages are not supported: the model's conversation template "
                              "brings its own system prompt", f"{param}.role")
        if message.role != expected:
            raise bad_request(f"expected a {expected} message (user and assistant turns alternate, "
                              f"starting with user), got {message.role}", f"{param}.role")
        text, found = _text(message, param)
        if IMAGE_PLACEHOLDER in text:
            raise bad_request(f"the text holds {IMAGE_PLACEHOLDER!r}, which this model reserves for images; "
                              "send images as image_url parts", f"{param}.content")
        if found and message.role != "user":
            raise bad_request("only user messages may hold images", f"{param}.content")
        turns.append(Turn("human" if message.role == "user" else "gpt",
                          "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in found) + text))
        images += found
    if messages[-1].role != "user":
        raise bad_request("the last message must be the user's", f"messages[{len(messages) - 1}].role")
    return turns, images


def _fetch(url: str, limits: Limits, param: str) -> bytes:
    if not limits.allow_remote_images:
        raise bad_request("remote image URLs are off on this server (start it with --allow-remote-images); "
                          "send the image as a data:image/...;base64 URL", param, "remote_images_disabled")
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout_s) as response:
            return response.read(limits.max_image_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise bad_request(f"cannot fetch the image: {err}", param, "image_fetch_failed") from err


def image_bytes(url: str, limits: Limits, param: str) -> bytes:
    """The bytes of a data URL (base64) or, where allowed, an http(s) URL; at most max_image_bytes."""
    match = DATA_URL.fullmatch(url)
    if match is not None:
        data = match["data"]
        if len(data) > (limits.max_image_bytes + 2) // 3 * 4 + 4:
            raise bad_request(f"the image is larger than {limits.max_image_bytes} bytes", param, "image_too_large")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise bad_request(f"invalid base64 in the data URL: {err}", param, "invalid_base64") from err
    elif is_url(url):
        raw = _fetch(url, limits, param)
    else:
        raise bad_request("expected a data:image/...;base64,... URL" +
                          (" or an http(s) URL" if limits.allow_remote_images else ""), param, "invalid_image_url")
    if len(raw) > limits.max_image_bytes:
        raise bad_request(f"the image is larger than {limits.max_image_bytes} bytes", param, "image_too_large")
    return raw


def decode_image(raw: bytes, limits: Limits, param: str) -> Image.Image:
    """RGB image from encoded bytes; the pixel count is checked from the header, before decoding."""
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            width, height = opened.size
            if width * height > limits.max_image_pixels:
                raise bad_request(f"the image has {width}x{height} pixels, more than the server's limit of "
                                  f"{limits.max_image_pixels}", param, "image_too_large")
            opened.load()
            return load_image(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise bad_request(f"cannot decode the image: {err}", param, "invalid_image") from err


def build_prompt(request: ChatCompletionRequest, processor: SparseCutProcessor, limits: Limits,
                 context: int) -> tuple[Prompt, SamplingParams]:
    """The tokenized prompt and sampling settings of a request; `context`: the model's maximum positions."""
    turns, sources = conversation(request.messages)
    if len(sources) > limits.max_images:
        raise bad_request(f"{len(sources)} images; this server takes at most {limits.max_images} per request",
                          "messages", "too_many_images")
    images = [decode_image(image_bytes(url, limits, param), limits, param) for url, param in sources]
    stop = request.stop_strings()
    if len(stop) > limits.max_stop:
        raise bad_request(f"{len(stop)} stop strings; at most {limits.max_stop}", "stop")
    text = render_prompt(processor.template, turns, tokenizer=processor.tokenizer,
                         eos=processor.tokenizer.eos_token or "</s>")
    batch = processor(text, images or None)
    ids = batch["input_ids"][0]
    room = context - len(ids)
    asked = request.max_completion_tokens or request.max_tokens
    if room < 1 or (asked is not None and asked > room):
        raise bad_request(f"the prompt has {len(ids)} tokens (images included) and asks for {asked or 1} more; "
                          f"the model's context is {context}", "messages", "context_length_exceeded")
    pixels = batch.get("pixel_values")
    params = SamplingParams(max_tokens=asked or min(limits.default_max_tokens, room), temperature=request.temperature,
                            top_p=request.top_p, stop=stop, seed=request.seed)
    return Prompt(ids, None if pixels is None else torch.as_tensor(pixels)), params
