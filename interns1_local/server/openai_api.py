"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models. Reasoning goes in ``reasoning_content``, where
OpenAI-compatible clients (the openai SDK's extra fields, LangChain, Open WebUI) look for it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..runtime.engine import Finished, Sampling, Stats
from ..runtime.grammar import json_grammar, tool_call_grammar
from ..runtime.parsers import ReasoningDelta, TextDelta, ToolCall
from ..runtime.vision import DETAIL_TILES
from .app import ApiError, State, check_single, collect, first_and_rest, state_of
from .scheduler import Job
from .schemas import (MAX_DEPTH, ChatRequest, CompletionRequest, ImageURL, Message, NamedToolChoice,
                      VideoURL, check_json)

router = APIRouter()
MAX_STOPS = 16


def finish_reason(stats: Stats, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if stats.finish_reason in ("length", "context") else "stop"


def usage(stats: Stats) -> dict[str, Any]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.generated_tokens,
            "total_tokens": stats.prompt_tokens + stats.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


def make_sampling(state: State, req: Any, max_tokens: int | None, stop: list[str], grammar: str | None,
                  repeat_penalty: float = 1.0) -> Sampling:
    """Shared by the OpenAI and Ollama routes; max_tokens is checked against the context."""
    n_ctx = state.engine.backend.n_ctx
    if max_tokens is not None and max_tokens > n_ctx:
        raise ApiError(400, f"max_tokens {max_tokens} exceeds the context ({n_ctx} tokens)", param="max_tokens")
    if len(stop) > MAX_STOPS:
        raise ApiError(400, f"at most {MAX_STOPS} stop strings", param="stop")
    return Sampling(req.temperature, req.top_k, req.top_p, req.min_p, req.seed, max_tokens or n_ctx, tuple(stop),
                    req.presence_penalty, req.frequency_penalty, repeat_penalty, grammar=grammar)


def _thinking(req: ChatRequest) -> bool:
    kwargs = req.chat_template_kwargs or {}
    if req.reasoning_effort == "none":
        return False
    if req.enable_thinking is not None:
        return req.enable_thinking
    return bool(kwargs.get("enable_thinking", True))


def _image_part(url: ImageURL | str | None) -> dict[str, Any]:
    """An image_url part as the template's image part; ``detail`` becomes the tile limit it asks for."""
    if not isinstance(url, ImageURL):
        return {"type": "image", "url": url or ""}
    limit = DETAIL_TILES[url.detail] if url.detail else None
    return {"type": "image", "url": url.url} | ({"max_tiles": limit} if limit else {})


def _video_part(url: VideoURL | str | None) -> dict[str, Any]:
    """A video_url part as the template's video part, with the frames it asks for."""
    if not isinstance(url, VideoURL):
        return {"type": "video", "url": url or ""}
    return {"type": "video", "url": url.url} | ({"frames": url.frames} if url.frames is not None else {})


_PARTS = {"text": lambda p: {"type": "text", "text": p.text or ""}, "image_url": lambda p: _image_part(p.image_url),
          "video_url": lambda p: _video_part(p.video_url)}


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI messages -> what the chat template reads: image parts, tool-call arguments as objects, and the
    reasoning of earlier replies (Intern-S1's template shows it for the turns of the current tool loop, so a loop's
    prompt repeats what the model wrote and what the KV cache holds)."""
    out = []
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        if isinstance(m.content, list):
            msg["content"] = [_PARTS[p.type](p) for p in m.content]
        else:
            msg["content"] = m.content or ""
        if m.reasoning_content is not None:
            msg["reasoning_content"] = m.reasoning_content
        if m.tool_calls:
            calls = []
            for c in m.tool_calls:
                arguments = _arguments(c.function.arguments, f"messages.{i}.tool_calls")
                calls.append({"type": "function", "id": c.id, "function": {"name": c.function.name,
                                                                            "arguments": arguments}})
            msg["tool_calls"] = calls
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def _arguments(text: str, where: str) -> Any:
    """A tool call's arguments (JSON text, OpenAI's convention) as the object the chat template reads."""
    try:
        return check_json(json.loads(text or "{}"))
    except RecursionError:  # how json reports nesting deeper than Python's stack
        raise ApiError(400, f"tool call arguments nested more than {MAX_DEPTH} levels deep", param=where) from None
    except ValueError as exc:
        raise ApiError(400, f"tool call arguments must be a JSON object: {exc}", param=where) from None


def _grammar(req: ChatRequest, tools: list[dict[str, Any]] | None) -> str | None:
    if req.grammar is not None:  # llama.cpp server's extension, first: GBNF as given (one that does not parse: 400)
        return req.grammar
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        return json_grammar()
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            raise ApiError(400, "response_format json_schema needs json_schema.schema", param="response_format")
        return json_grammar(fmt.json_schema.schema_)
    if tools and req.tool_choice == "required":
        return tool_call_grammar(tools)
    if tools and isinstance(req.tool_choice, NamedToolChoice):
        return tool_call_grammar(tools, req.tool_choice.function.name)
    return None


def _call_json(call: ToolCall, index: int) -> dict[str, Any]:
    return {"index": index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    state = state_of(request)
    state.check_model(body.model)
    check_single(body.n)
    tools = [t.model_dump() for t in body.tools] if body.tools and body.tool_choice != "none" else None
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    thinking = _thinking(body)
    sampling = make_sampling(state, body, body.max_completion_tokens or body.max_tokens, stop, _grammar(body, tools))
    messages = _messages(body.messages)
    job = Job(messages, tools, thinking, sampling, asyncio.get_running_loop(),
              media=await state.load_media(messages), timeout_s=state.options.request_timeout_s)
    first, events = await first_and_rest(state.submit(job))
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.options.model_name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chat_stream(events, meta, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    reply = await collect(events)
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or (None if reply.calls else ""),
                               "reasoning_content": reply.reasoning or None}
    if reply.calls:
        message["tool_calls"] = [{k: v for k, v in _call_json(c, i).items() if k != "index"}
                                 for i, c in enumerate(reply.calls)]
    return {**meta, "object": "chat.completion", "usage": usage(reply.stats),
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reply.stats,
                                                                                          bool(reply.calls))}]}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _chat_stream(events: AsyncIterator[Any], meta: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
        return _sse({**meta, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})

    yield chunk({"role": "assistant", "content": ""})
    n_calls = 0
    try:
        async for e in events:
            if isinstance(e, ReasoningDelta):
                yield chunk({"reasoning_content": e.text})
            elif isinstance(e, TextDelta):
                yield chunk({"content": e.text})
            elif isinstance(e, ToolCall):
                yield chunk({"tool_calls": [_call_json(e, n_calls)]})
                n_calls += 1
            elif isinstance(e, Finished):
                yield chunk({}, finish_reason(e.stats, n_calls > 0))
                if include_usage:
                    yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(e.stats)})
    except ApiError as exc:  # after the stream began: report it in the stream, as OpenAI does
        yield _sse({"error": {"message": exc.message, "type": exc.kind}})
    yield "data: [DONE]\n\n"


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = state_of(request)
    state.check_model(body.model)
    check_single(body.n)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(400, "prompt must be one string (send several requests for several prompts)", param="prompt")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    sampling = make_sampling(state, body, body.max_tokens or 16, stop, None)  # OpenAI's default is 16
    job = Job([], None, False, sampling, asyncio.get_running_loop(), raw_prompt=prompts[0],
              timeout_s=state.options.request_timeout_s)
    first, events = await first_and_rest(state.submit(job))
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.options.model_name,
            "object": "text_completion"}
    if body.stream:
        async def stream() -> AsyncIterator[str]:
            async for e in events:
                if isinstance(e, (TextDelta, ToolCall)):
                    text = e.text if isinstance(e, TextDelta) else e.raw
                    yield _sse({**meta, "choices": [{"index": 0, "text": text, "finish_reason": None}]})
                elif isinstance(e, Finished):
                    yield _sse({**meta, "choices": [{"index": 0, "text": "", "finish_reason":
                                                     finish_reason(e.stats, False)}]})
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
    reply = await collect(events)  # a raw prompt has no thinking; a tool block stays text
    text = reply.text + "".join(c.raw for c in reply.calls)
    return {**meta, "usage": usage(reply.stats),
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason(reply.stats, False)}]}


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"object": "list", "data": [{"id": state.options.model_name, "object": "model", "created": 0,
                                        "owned_by": "interns1-local"}]}
