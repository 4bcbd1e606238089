"""The FastAPI app: OpenAI's chat completions (streamed or not), the model list, health, and the chat page.

Requests are parsed, checked and tokenized (images decoded) in the request's own thread,
then queued for the engine; its events come back through the event loop. Every error is
OpenAI's shape with a 4xx/5xx status, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .engine import Delta, Engine, Failed, Finished, QueueFull, Request
from .errors import ApiError, bad_request
from .messages import Limits, build_prompt
from .schema import ChatCompletionRequest

PAGE = Path(__file__).with_name("page.html")
GRACE_S = 1.0  # the engine reports a timeout itself; this much later the app stops waiting for it


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    api_key: str | None = None  # with a key, every /v1 request needs `Authorization: Bearer KEY`
    limits: Limits = field(default_factory=Limits)


def _parse(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body is not valid JSON: {err}", code="invalid_json") from err
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "list[", "str")))
        raise bad_request(f"{param or 'body'}: {first['msg']}", param or None) from err


def _check_key(settings: ServerSettings, request: HttpRequest) -> None:
    if settings.api_key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                       "invalid_request_error", None, "invalid_api_key")


def _submit(engine: Engine, request: Request) -> None:
    try:
        engine.submit(request)
    except QueueFull as err:
        raise ApiError(429, str(err), "rate_limit_error", None, "queue_full") from err
    except RuntimeError as err:
        raise ApiError(503, str(err), "server_error") from err


def _remaining(request: Request) -> float | None:
    return None if request.deadline is None else max(0.0, request.deadline - time.monotonic()) + GRACE_S


def _timed_out(engine: Engine, request: Request) -> Failed:
    engine.cancel(request)
    return Failed(504, f"the request took longer than the server's timeout ({engine.timeout_s:g} s)",
                  "timeout_error")


async def _next(engine: Engine, request: Request, events: asyncio.Queue):
    try:
        return await asyncio.wait_for(events.get(), _remaining(request))
    except asyncio.TimeoutError:
        return _timed_out(engine, request)


async def _client_left(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


def create_app(engine: Engine, settings: ServerSettings, *, manage_engine: bool = True) -> FastAPI:
    """The app around `engine`; with `manage_engine` its lifespan starts and closes the engine."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine:
            engine.start()
        yield
        if manage_engine:
            await run_in_threadpool(engine.close)

    app = FastAPI(title="sparsecut", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    page = PAGE.read_text()
    context = engine.model.config.text_config.max_position_embeddings
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(_, err: ApiError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, err: HTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(err.status_code, str(err.detail), kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_, err: Exception):
        return JSONResponse(ApiError(500, f"internal error: {type(err).__name__}", "server_error").body(),
                            status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, **engine.stats()}

    @app.get("/v1/models")
    async def models(http: HttpRequest):
        _check_key(settings, http)
        return {"object": "list",
                "data": [{"id": settings.model_name, "object": "model", "created": created, "owned_by": "sparsecut"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        _check_key(settings, http)
        body = _parse(await http.body())
        if body.model != settings.model_name:
            raise ApiError(404, f"the model {body.model!r} does not exist; this server serves "
                                f"{settings.model_name!r}", "not_found_error", "model", "model_not_found")
        prompt, params = await run_in_threadpool(build_prompt, body, engine.processor, settings.limits, context)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        request = Request(prompt, params, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        _submit(engine, request)
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_stream(engine, request, events, meta, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _complete(engine, request, events, meta, http)

    return app


async def _complete(engine: Engine, request: Request, events: asyncio.Queue, meta: dict, http: HttpRequest):
    async def final():
        while True:
            event = await _next(engine, request, events)
            if not isinstance(event, Delta):
                return event

    answer, left = asyncio.ensure_future(final()), asyncio.ensure_future(_client_left(http))
    await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
    if not answer.done():  # the client went away: free its place
        answer.cancel()
        engine.cancel(request)
        return JSONResponse(ApiError(499, "the client closed the request", "invalid_request_error").body(), 499)
    left.cancel()
    event = answer.result()
    if isinstance(event, Failed):
        raise ApiError(event.status, event.message, event.kind)
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": event.text},
                         "logprobs": None, "finish_reason": event.finish_reason}],
            "usage": _usage(event)}


def _usage(event: Finished) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _stream(engine: Engine, request: Request, events: asyncio.Queue, meta: dict,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format: role, content pieces, the finish reason, [DONE]."""
    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        while True:
            event = await _next(engine, request, events)
            if isinstance(event, Delta):
                yield _sse(chunk({"content": event.text}))
                continue
            if isinstance(event, Failed):
                yield _sse(ApiError(event.status, event.message, event.kind).body())
            else:
                yield _sse(chunk({}, event.finish_reason))
                if include_usage:
                    yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(event)})
            yield "data: [DONE]\n\n"
            return
    finally:
        engine.cancel(request)  # a client that left mid-answer frees its row (a no-op once finished)
