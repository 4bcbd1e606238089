"""`sparsecut serve`: the official openai client against a real server on the tiny preset.

Answers of the random tiny model are gibberish, so tests compare them with what
`sparsecut chat` (Chat.ask, transformers' generate) answers for the same conversation.
Servers run with uvicorn in a thread on a free loopback port; servers whose engine is
not started hold their requests in the queue, which makes batching and a full queue
deterministic.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import openai
import pytest
from openai import OpenAI
from PIL import Image

from sparsecut_core.inference.chat import Chat, Sampling
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.serving.app import ServerSettings, create_app
from sparsecut_core.serving.engine import Engine
from sparsecut_core.serving.messages import Limits
from sparsecut_core.serving.server import serve_in_thread

NAME = "tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    model, processor = build_from_preset(load_preset("tiny"), seed=0)
    return model.eval(), processor


def png(size=(40, 30), colour=(200, 30, 30), kind="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, kind)
    return buffer.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


RED = png()
BLUE = png((30, 40), (30, 30, 200))


def user(text: str, *images: bytes) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_url(raw)}} for raw in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}] if images else text}


@contextmanager
def server(tiny_model, *, start=True, api_key=None, limits=Limits(), **engine_options):
    model, processor = tiny_model
    engine = Engine(model, processor, **engine_options)
    app = create_app(engine, ServerSettings(NAME, api_key=api_key, limits=limits), manage_engine=False)
    if start:
        engine.start()
    try:
        with serve_in_thread(app) as url:
            yield url, engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def running(tiny_model):
    with server(tiny_model, max_batch_size=4) as (url, engine):
        yield url, engine


def client(url: str, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def post(url: str, body: bytes | dict, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    """A raw POST to /v1/chat/completions: (status, JSON body or text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def chat_answer(tiny_model, turns: list[tuple[str, str]], question: str, image: bytes | None, n: int) -> str:
    """What `sparsecut chat` answers (greedy, n new tokens) after the exchanges `turns`."""
    model, processor = tiny_model
    session = Chat(model, processor, Image.open(io.BytesIO(image)) if image else Image.new("RGB", (8, 8)))
    for asked, answered in turns:
        session.add_exchange(asked, answered)
    return session.ask(question, Sampling(max_new_tokens=n))


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- the API through the official client ---

def test_openai_client_gets_the_answer_sparsecut_chat_gives(tiny_model, running):
    url, _ = running
    reply = client(url).chat.completions.create(model=NAME, messages=[user("what shape is it?", RED)], max_tokens=6)
    expected = chat_answer(tiny_model, [], "what shape is it?", RED, 6)
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason == "length" and reply.object == "chat.completion"
    model, processor = tiny_model
    session = Chat(model, processor, Image.open(io.BytesIO(RED)))
    prompt_tokens = processor(session.prompt("what shape is it?"), [session.image])["input_ids"].shape[1]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 6)
    assert reply.usage.total_tokens == prompt_tokens + 6


def test_streamed_pieces_join_to_the_same_answer_and_end_with_usage(tiny_model, running):
    url, _ = running
    stream = client(url).chat.completions.create(model=NAME, messages=[user("what colour?", BLUE)], max_tokens=7,
                                                 stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 2  # it streamed, not one piece at the end
    assert "".join(pieces) == chat_answer(tiny_model, [], "what colour?", BLUE, 7)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 7 and chunks[0].choices[0].delta.role == "assistant"


def test_the_raw_stream_is_server_sent_events_ending_with_done(running):
    url, _ = running
    request = urllib.request.Request(f"{url}/v1/chat/completions", method="POST",
                                     data=json.dumps({"model": NAME, "messages": [user("hi")], "max_tokens": 3,
                                                      "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [e for e in response.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_a_multi_turn_conversation_uses_the_template_as_sparsecut_chat(tiny_model, running):
    url, _ = running
    messages = [user("what shape?", RED), {"role": "assistant", "content": "a square"}, user("and its colour?")]
    reply = client(url).chat.completions.create(model=NAME, messages=messages, max_tokens=5)
    assert reply.choices[0].message.content == chat_answer(tiny_model, [("what shape?", "a square")],
                                                           "and its colour?", RED, 5)


def test_stop_strings_cut_the_answer_and_finish_with_stop(running):
    url, _ = running
    api = client(url)
    full = api.chat.completions.create(model=NAME, messages=[user("count them", RED)], max_tokens=8)
    words = full.choices[0].message.content.split()
    reply = api.chat.completions.create(model=NAME, messages=[user("count them", RED)], max_tokens=8, stop=[words[2]])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full.choices[0].message.content.split(words[2])[0]


def test_a_seed_makes_sampling_repeatable(running):
    url, _ = running
    ask = partial(client(url).chat.completions.create, model=NAME, messages=[user("say something", RED)],
                  max_tokens=8, temperature=1.5)
    answers = [ask(seed=seed).choices[0].message.content for seed in (1, 1, 2, 3)]
    assert answers[0] == answers[1] and len(set(answers)) > 1


def test_models_and_health(running):
    url, _ = running
    assert [m.id for m in client(url).models.list()] == [NAME]
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


# --- batching ---

def test_batched_greedy_answers_equal_one_request_at_a_time(tiny_model):
    requests = [([user("what shape is it?", RED)], 6), ([user("colour?", BLUE)], 5),
                ([user("a longer question about the colour of the thing in the picture")], 6),
                ([user("what shape?", RED), {"role": "assistant", "content": "a square"}, user("why?")], 4)]
    with server(tiny_model, start=False, max_batch_size=4) as (url, engine):
        api = client(url)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(api.chat.completions.create, model=NAME, messages=m, max_tokens=n)
                       for m, n in requests]
            wait_for(lambda: engine.stats()["waiting"] == 4)
            engine.start()  # all four wait: they run as one left-padded batch
            batched = [f.result().choices[0].message.content for f in futures]
        assert engine.batch_sizes == [4]
    with server(tiny_model, max_batch_size=1) as (url, engine):
        alone = [client(url).chat.completions.create(model=NAME, messages=m, max_tokens=n).choices[0].message.content
                 for m, n in requests]
        assert engine.batch_sizes == [1, 1, 1, 1]
    assert batched == alone and all(alone)
    assert alone[0] == chat_answer(tiny_model, [], "what shape is it?", RED, 6)


def test_a_full_queue_answers_429_and_the_waiting_request_is_served(tiny_model):
    with server(tiny_model, start=False, max_queue=1) as (url, engine):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, {"model": NAME, "messages": [user("hi")], "max_tokens": 2})
            wait_for(lambda: engine.stats()["waiting"] == 1)
            status, body = post(url, {"model": NAME, "messages": [user("me too")], "max_tokens": 2})
            assert status == 429 and body["error"]["code"] == "queue_full"
            with pytest.raises(openai.RateLimitError):
                client(url).chat.completions.create(model=NAME, messages=[user("me too")], max_tokens=2)
            engine.start()
            assert first.result()[0] == 200


def test_a_client_that_disconnects_frees_its_place_in_the_queue(tiny_model):
    with server(tiny_model, start=False, max_queue=1) as (url, engine):
        with pytest.raises(TimeoutError):
            post(url, {"model": NAME, "messages": [user("hi")], "max_tokens": 2}, timeout=0.5)
        wait_for(lambda: engine.stats()["waiting"] == 0)  # its slot is free again
        engine.start()
        assert post(url, {"model": NAME, "messages": [user("next")], "max_tokens": 2})[0] == 200


def test_a_client_that_leaves_mid_stream_frees_its_row_in_the_batch(running):
    url, engine = running
    body = {"model": NAME, "messages": [user("go on")], "max_tokens": 470}
    start = time.monotonic()
    status, full = post(url, body)  # the whole greedy answer: a few hundred tokens
    whole = time.monotonic() - start
    assert status == 200 and full["usage"]["completion_tokens"] > 200
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.read1(100).startswith(b"data: ")
    left = time.monotonic()
    connection.sock.close()
    connection.close()
    wait_for(lambda: engine.stats()["running"] == 0, timeout=whole)
    assert time.monotonic() - left < whole / 2  # it stopped generating, it did not run to the end


def test_a_request_past_the_timeout_gets_504(tiny_model):
    with server(tiny_model, start=False, timeout_s=0.2) as (url, engine):
        status, body = post(url, {"model": NAME, "messages": [user("hi")], "max_tokens": 2})
        assert status == 504 and body["error"]["type"] == "timeout_error"
        assert engine.stats()["waiting"] == 0


# --- bad input: OpenAI's error shape, 4xx, and the server goes on ---

SMALL = Limits(max_images=2, max_image_bytes=20_000, max_image_pixels=200 * 200)


def bad_requests() -> dict[str, tuple[bytes | dict, int, str | None]]:
    """name -> (body, status, param)."""
    ok = {"model": NAME, "messages": [user("hi")], "max_tokens": 2}
    image = lambda url: {**ok, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]}
    noise = bytes(range(256)) * 200  # 51 kB that compresses badly
    return {
        "malformed JSON": (b'{"model": "tiny", "messages": [', 400, None),
        "not an object": (b"[1, 2]", 400, None),
        "no messages": ({"model": NAME, "messages": []}, 400, "messages"),
        "unknown model": ({**ok, "model": "gpt-4o"}, 404, "model"),
        "bad base64": (image("data:image/png;base64,!!notbase64!!"), 400, "messages[0].content[0].image_url.url"),
        "undecodable image": (image(data_url(b"GIF89a but not really")), 400, "messages[0].content[0].image_url.url"),
        "too many bytes": (image(data_url(noise)), 400, "messages[0].content[0].image_url.url"),
        "too many pixels": (image(data_url(png((400, 300)))), 400, "messages[0].content[0].image_url.url"),
        "too many images": ({**ok, "messages": [user("hi", RED, RED, RED)]}, 400, "messages"),
        "too many tokens": ({**ok, "max_tokens": 10_000}, 400, "messages"),
        "prompt too long": ({**ok, "messages": [user("what " * 600)]}, 400, "messages"),
        "remote image off": (image("https://example.com/cat.png"), 400, "messages[0].content[0].image_url.url"),
        "system message": ({**ok, "messages": [{"role": "system", "content": "be brief"}, user("hi")]}, 400,
                           "messages[0].role"),
        "placeholder in text": ({**ok, "messages": [user("look: <image>")]}, 400, "messages[0].content"),
        "temperature out of range": ({**ok, "temperature": 5}, 400, "temperature"),
    }


def test_every_bad_input_is_a_4xx_in_openai_error_shape_and_the_server_goes_on(tiny_model):
    with server(tiny_model, limits=SMALL) as (url, _):
        for name, (body, status, param) in bad_requests().items():
            got, error = post(url, body)
            assert got == status, (name, error)
            assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, name
            assert error["error"]["param"] == param and error["error"]["message"], name
        with pytest.raises(openai.BadRequestError, match="base64"):
            client(url).chat.completions.create(model=NAME, max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}])
        reply = client(url).chat.completions.create(model=NAME, messages=[user("still there?", RED)], max_tokens=3)
        assert reply.choices[0].message.content


def test_remote_images_are_fetched_only_when_allowed(tiny_model, tmp_path):
    (tmp_path / "red.png").write_bytes(RED)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as files:
        threading.Thread(target=files.serve_forever, daemon=True).start()
        image_url = f"http://127.0.0.1:{files.server_address[1]}/red.png"
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                 {"type": "text", "text": "what shape is it?"}]}]
        with server(tiny_model, limits=Limits(allow_remote_images=True)) as (url, _):
            reply = client(url).chat.completions.create(model=NAME, messages=messages, max_tokens=6)
        files.shutdown()
    assert reply.choices[0].message.content == chat_answer(tiny_model, [], "what shape is it?", RED, 6)


def test_with_an_api_key_every_request_without_it_gets_401(tiny_model):
    with server(tiny_model, api_key="s3cret") as (url, _):
        body = {"model": NAME, "messages": [user("hi")], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, error = post(url, body, headers)
            assert status == 401 and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        reply = client(url, "s3cret").chat.completions.create(model=NAME, messages=[user("hi")], max_tokens=2)
        assert reply.choices[0].message.content is not None


# --- the command ---

@pytest.mark.slow  # a fresh process importing torch and transformers: 15-30 s on the shared CPU box
def test_sparsecut_serve_serves_a_saved_model_with_the_key_from_the_environment(tiny_model, tmp_path):
    model, processor = tiny_model
    model.save_pretrained(tmp_path / "run" / "model")
    processor.save_pretrained(tmp_path / "run" / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SPARSECUT_API_KEY": "from-env", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sparsecut_cli.app", "serve", "--model", str(tmp_path / "run"),
               "--port", str(port), "--device", "cpu"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            line = proc.stdout.readline()
            assert f"serving run on cpu at http://localhost:{port}" in line and "API key required" in line, line
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _answers(f"{url}/health"), timeout=60)
            with pytest.raises(openai.AuthenticationError):
                client(url).models.list()
            reply = client(url, "from-env").chat.completions.create(model="run", messages=[user("hi", RED)],
                                                                    max_tokens=3)
            assert reply.choices[0].message.content == chat_answer(tiny_model, [], "hi", RED, 3)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
