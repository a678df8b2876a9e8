"""The ASGI app: ``create_app(engine, options)`` builds it with no module globals (state lives on ``app.state``).

FastAPI (on Starlette, served by uvicorn): its pydantic request models are both the validation (a client's mistake is
a 400 naming the field) and the OpenAPI schema that the fuzz test reads. Decoding never runs on the event loop: the
scheduler thread owns llama.cpp; handlers only await its events. Image downloads and decoding go to the thread pool.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import (ChatTemplateError, ContextFullError, DepictionError, DepictionUnavailable, ImageError,
                      InternS1Error, UsageError, VideoError)
from ..runtime.engine import Engine, Finished, Stats
from ..runtime.images import ImageLimits
from ..runtime.parsers import ReasoningDelta, TextDelta, ToolCall
from .metrics import Metrics
from .scheduler import EngineLost, Job, QueueFull, QueueTimeout, Scheduler, ShuttingDown


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 11435
    parallel: int = 4
    max_queue: int = 64
    api_key: str | None = None
    allow_remote_images: bool = False
    allow_private_addresses: bool = False  # with remote images: may a URL reach loopback / private networks
    allow_file_root: Path | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 50 * 1024 * 1024
    request_timeout_s: float = 600.0
    model_name: str = "intern-s1"
    webui: bool = True  # the chat page at / (server/webui.py)
    extra: dict[str, Any] = field(default_factory=dict)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(allow_urls=self.allow_remote_images, allow_files=self.allow_file_root is not None,
                           allow_file_root=self.allow_file_root, allow_private_addresses=self.allow_private_addresses)


class ApiError(Exception):
    """An HTTP error with OpenAI's error fields; the Ollama routes render the same as ``{"error": message}``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}


# Library errors as HTTP errors: one table (STYLE: typed errors, mapped once). A full context is the request's
# length (idle sequences' caches are dropped before it is reported); anything else is the server's (500).
HTTP_STATUS: dict[type[InternS1Error], int] = {
    ImageError: 400, VideoError: 400, UsageError: 400, ChatTemplateError: 400, ContextFullError: 400,
    QueueTimeout: 503, ShuttingDown: 503, EngineLost: 503, DepictionError: 400, DepictionUnavailable: 404,
}


def api_error(exc: InternS1Error) -> ApiError:
    status = HTTP_STATUS.get(type(exc), 500)
    return ApiError(status, str(exc), "invalid_request_error" if status < 500 else "server_error",
                    headers={"Retry-After": "1"} if status == 503 else None)


# Each API's own error body, by path prefix (the first that matches): Ollama's bare message, Anthropic's typed
# envelope, and OpenAI's object for everything else.
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}
ERROR_SHAPES: tuple[tuple[str, Any], ...] = (
    ("/api/", lambda err: {"error": err.message}),
    ("/v1/messages", lambda err: {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(err.status, "api_error"),
                                                             "message": err.message}}),
    ("/", lambda err: {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}),
)


def error_body(path: str, err: ApiError) -> dict[str, Any]:
    return next(shape(err) for prefix, shape in ERROR_SHAPES if path.startswith(prefix))


def _error_response(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, err), status_code=err.status, headers=err.headers)


class State:
    """What the handlers share: the engine, the scheduler, counters, options."""

    def __init__(self, engine: Engine, options: ServeOptions) -> None:
        self.engine, self.options, self.metrics = engine, options, Metrics()
        self.scheduler = Scheduler(engine, options.parallel, options.max_queue, self.metrics)

    def check_model(self, name: str) -> None:
        if name not in (self.options.model_name, f"{self.options.model_name}:latest"):
            raise ApiError(404, f"model {name!r} not found; this server serves {self.options.model_name!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")

    async def load_media(self, messages: list[dict[str, Any]]) -> list[Any]:
        """The request's images and videos, read and decoded in the thread pool (never on the decoding thread)."""
        try:
            return await run_in_threadpool(self.engine.load_media, messages)
        except InternS1Error as exc:
            raise api_error(exc) from None

    async def submit(self, job: Job) -> AsyncIterator[Any]:
        """Queue the job and yield its events up to ``Finished``; leaving early (a client gone) cancels it."""
        try:
            self.scheduler.submit(job)
        except QueueFull:
            raise ApiError(429, "the server is busy: every sequence is decoding and the queue is full; retry shortly",
                           "rate_limit_error", headers={"Retry-After": "1"}) from None
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, InternS1Error):
                    raise api_error(item)
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            job.cancel.set()  # a no-op once finished; otherwise the scheduler frees the sequence at its next step


@dataclass
class Reply:
    """A whole reply, for the non-streaming responses."""

    reasoning: str
    text: str
    calls: list[ToolCall]
    stats: Stats


async def collect(events: AsyncIterator[Any]) -> Reply:
    reasoning, text, calls, stats = [], [], [], None
    async for e in events:
        if isinstance(e, ReasoningDelta):
            reasoning.append(e.text)
        elif isinstance(e, TextDelta):
            text.append(e.text)
        elif isinstance(e, ToolCall):
            calls.append(e)
        elif isinstance(e, Finished):
            stats = e.stats
    assert stats is not None  # State.submit ends every stream with Finished or raises
    return Reply("".join(reasoning), "".join(text), calls, stats)


def check_single(n: int | None) -> None:
    if n not in (None, 1):
        raise ApiError(400, "n > 1 is not supported: send several requests (they are batched)", param="n")


def state_of(request: Request) -> State:
    return request.app.state.interns1


async def first_and_rest(events: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[Any]]:
    """Wait for the first event before a streaming response starts, so errors found while preparing the prompt
    (a bad template input, a full context) are a proper 4xx rather than an error inside a 200 stream."""
    first = await events.__anext__()

    async def chained() -> AsyncIterator[Any]:
        yield first
        async for e in events:
            yield e

    return first, chained()


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting what actually arrives (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _too_large(scope, send, self.limit)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(scope, send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    body = error_body(scope["path"], ApiError(413, f"request body larger than {limit} bytes"))
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def create_app(engine: Engine, options: ServeOptions = ServeOptions()) -> FastAPI:
    from . import anthropic_api, ollama_api, openai_api, responses_api, webui
    from .response_store import ResponseStore

    state = State(engine, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.scheduler.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.scheduler.stop)

    app = FastAPI(title="interns1-local", version=__version__, lifespan=lifespan)
    app.state.interns1 = state
    app.include_router(openai_api.router)
    app.include_router(ollama_api.router)
    app.include_router(responses_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(webui.api_router)
    if options.webui:
        app.include_router(webui.page_router)
    public = {"/health"} | (webui.PUBLIC_PATHS if options.webui else set())  # no API key asked
    app.state.responses = ResponseStore()

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(InternS1Error)
    async def on_library_error(request: Request, exc: InternS1Error) -> JSONResponse:
        return _error_response(request, api_error(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # with unions pydantic reports each alternative; the deepest location is the one the client got wrong
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
        return _error_response(request, ApiError(400, message, param=where or None))

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next: Any) -> Any:
        if options.api_key and request.url.path not in public and request.method != "OPTIONS":
            # Anthropic's clients send the key as x-api-key
            given = request.headers.get("authorization") or f"Bearer {request.headers.get('x-api-key', '')}"
            expected = f"Bearer {options.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = _error_response(request, ApiError(401, "missing or wrong API key (Authorization: Bearer "
                                                                  "KEY, or x-api-key: KEY)", "authentication_error"))
                state.metrics.request(request.url.path, 401)
                return response
        response = await call_next(request)
        route = request.scope.get("route")
        state.metrics.request(getattr(route, "path", "other"), response.status_code)
        return response

    @app.get("/health")
    async def health() -> Any:
        if state.scheduler.lost:  # llama.cpp failed for good (an RPC worker lost): say so until restarted
            return JSONResponse({"status": "error", "model": options.model_name, "error": str(state.scheduler.lost)},
                                status_code=503)
        return {"status": "ok", "model": options.model_name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return state.metrics.render() + _placement_lines(state.engine.backend.placement)

    if options.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=options.max_body_bytes)
    return app


def _placement_lines(placement: Any) -> str:
    """The CPU buffer placement chosen at load (runtime/placement.py), as an info gauge and the bytes pinned."""
    lines = ["# TYPE interns1_cpu_buffers_info gauge",
             f'interns1_cpu_buffers_info{{mode="{placement.decision.mode}",requested="{placement.decision.requested}",'
             f'extra_types="{",".join(placement.extra_types)}"}} 1',
             "# TYPE interns1_cpu_buffers_pinned_bytes gauge"]
    lines += [f'interns1_cpu_buffers_pinned_bytes{{buffer_type="{name}"}} {size}'
              for name, size in sorted(placement.pinned.items())]
    return "\n".join(lines) + "\n"
