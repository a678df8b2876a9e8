"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens), what Claude Code and the Anthropic SDK speak:
a translation onto the chat route's scheduler and engine. Content blocks become chat-template messages; the
scheduler's events become content blocks and Anthropic's stream events. A non-streamed message is what the stream
builds (one code path). Errors use Anthropic's envelope (app.py's ERROR_SHAPES)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..runtime.engine import Conversation, Finished
from ..runtime.grammar import tool_call_grammar
from ..runtime.parsers import ReasoningDelta, TextDelta, ToolCall
from .agent_schemas import CountTokensRequest, MessagesRequest
from .app import ApiError, first_and_rest, state_of
from .openai_api import make_sampling
from .scheduler import Job
from .schemas import FunctionDef, Tool

router = APIRouter()
STOP_REASONS = {"length": "max_tokens", "context": "max_tokens"}  # else end_turn (tool_use with calls)


def _image(source: Any, where: str) -> dict[str, Any]:
    if source.type == "base64":
        if not source.data:
            raise ApiError(400, "a base64 image source needs data", param=f"{where}.source.data")
        return {"type": "image", "url": f"data:{source.media_type or 'application/octet-stream'};base64,{source.data}"}
    if not source.url:
        raise ApiError(400, "a url image source needs url", param=f"{where}.source.url")
    return {"type": "image", "url": source.url}


def _turn(role: str, content: str | list[Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message -> template messages: tool results become tool messages (before the rest of the user's
    turn), tool_use blocks the assistant's tool calls, thinking blocks its reasoning."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    tools: list[dict[str, Any]] = []
    message: dict[str, Any] = {"role": role, "content": []}
    for j, b in enumerate(content):
        at = f"{where}.content.{j}"
        if b.type == "text":
            message["content"].append({"type": "text", "text": b.text})
        elif b.type == "image":
            message["content"].append(_image(b.source, at))
        elif b.type == "tool_use":
            names[b.id] = b.name
            message.setdefault("tool_calls", []).append(
                {"type": "function", "id": b.id, "function": {"name": b.name, "arguments": b.input}})
        elif b.type == "tool_result":
            result = b.content if isinstance(b.content, str) else [
                {"type": "text", "text": p.text} if p.type == "text" else _image(p.source, at) for p in b.content]
            tools.append({"role": "tool", "tool_call_id": b.tool_use_id, "name": names.get(b.tool_use_id),
                          "content": result})
        elif b.type == "thinking":
            message["reasoning_content"] = message.get("reasoning_content", "") + b.thinking
        elif b.type != "redacted_thinking":  # documents, server tool blocks
            raise ApiError(400, f"{b.type} blocks are not supported here", param=at)
    keep = message["content"] or message.get("tool_calls") or (role == "assistant" and not tools)
    return tools + ([message] if keep else [])


def _messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    system = body.system if isinstance(body.system, str) or body.system is None else "\n".join(
        b.text for b in body.system)
    out = [{"role": "system", "content": system}] if system else []
    names: dict[str, str] = {}
    for i, m in enumerate(body.messages):
        out += _turn(m.role, m.content, f"messages.{i}", names)
    return out


def _tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    if not body.tools or (body.tool_choice and body.tool_choice.type == "none"):
        return None
    server = sorted({t.type for t in body.tools if t.type not in (None, "custom")})
    if server:
        raise ApiError(400, f"server tools {server} are not supported: only client tools (name, input_schema) run "
                            "here", param="tools")
    return [Tool(function=FunctionDef(name=t.name, description=t.description, parameters=t.input_schema))
            .model_dump() for t in body.tools]


def _grammar(body: MessagesRequest, tools: list[dict[str, Any]] | None) -> str | None:
    choice = body.tool_choice
    if not tools or choice is None or choice.type == "auto":
        return None
    if choice.type == "tool" and not choice.name:
        raise ApiError(400, "tool_choice of type tool needs a name", param="tool_choice.name")
    return tool_call_grammar(tools, choice.name if choice.type == "tool" else None)


def _thinking(body: CountTokensRequest) -> bool:
    return body.thinking is not None and body.thinking.type != "disabled"  # Anthropic's default: no thinking


class Blocks:
    """The scheduler's events -> content blocks and the stream events that build them."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.open: dict[str, Any] | None = None

    def _index(self) -> int:
        return len(self.message["content"]) - 1

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        return [("message_start", {"message": copy.deepcopy(self.message)})]

    def _start(self, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._stop()
        self.message["content"].append(block)
        return events + [("content_block_start", {"index": self._index(), "content_block": copy.deepcopy(block)})]

    def _stop(self) -> list[tuple[str, dict[str, Any]]]:
        if self.open is None:
            return []
        self.open = None
        return [("content_block_stop", {"index": self._index()})]

    def _delta(self, kind: str, key: str, text: str) -> list[tuple[str, dict[str, Any]]]:
        events = []
        if self.open is None or self.open["type"] != kind:
            block = {"type": kind, key: ""} | ({"signature": ""} if kind == "thinking" else {})
            events, self.open = self._start(block), block
        self.open[key] += text
        return events + [("content_block_delta", {"index": self._index(),
                                                  "delta": {"type": f"{key}_delta", key: text}})]

    def feed(self, e: Any) -> list[tuple[str, dict[str, Any]]]:
        if isinstance(e, ReasoningDelta):
            return self._delta("thinking", "thinking", e.text)
        if isinstance(e, TextDelta):
            return self._delta("text", "text", e.text)
        if isinstance(e, ToolCall):
            events = self._start({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": e.name,
                                  "input": {}})
            self.message["content"][-1]["input"] = e.arguments
            delta = {"type": "input_json_delta", "partial_json": json.dumps(e.arguments, ensure_ascii=False)}
            return events + [("content_block_delta", {"index": self._index(), "delta": delta}),
                             ("content_block_stop", {"index": self._index()})]
        if isinstance(e, Finished):
            return self._finish(e)
        return []

    def _finish(self, done: Finished) -> list[tuple[str, dict[str, Any]]]:
        s, events = done.stats, self._stop()
        calls = any(b["type"] == "tool_use" for b in self.message["content"])
        reason = ("tool_use" if calls else "stop_sequence" if s.stop_sequence is not None else
                  STOP_REASONS.get(s.finish_reason, "end_turn"))
        usage = {"input_tokens": s.prompt_tokens - s.cached_tokens, "output_tokens": s.generated_tokens,
                 "cache_read_input_tokens": s.cached_tokens, "cache_creation_input_tokens": 0}
        self.message |= {"stop_reason": reason, "stop_sequence": s.stop_sequence, "usage": usage}
        return events + [("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": s.stop_sequence},
                                            "usage": usage}), ("message_stop", {})]


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request) -> Any:
    state = state_of(request)
    state.check_model(body.model)
    messages, tools = _messages(body), _tools(body)
    view = SimpleNamespace(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=None, seed=None,
                           presence_penalty=0.0, frequency_penalty=0.0)
    sampling = make_sampling(state, view, body.max_tokens, list(body.stop_sequences or []), _grammar(body, tools))
    if _thinking(body) and body.thinking.budget_tokens is not None:
        sampling = dataclasses.replace(sampling, reasoning_budget=body.thinking.budget_tokens)
    job = Job(messages, tools, _thinking(body), sampling, asyncio.get_running_loop(),
              media=await state.load_media(messages), timeout_s=state.options.request_timeout_s)
    _, events = await first_and_rest(state.submit(job))
    out = Blocks({"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                  "model": state.options.model_name, "content": [], "stop_reason": None, "stop_sequence": None,
                  "usage": {"input_tokens": 0, "output_tokens": 0}})
    if body.stream:
        return StreamingResponse(_stream(out, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    async for e in events:
        out.feed(e)
    return out.message


async def _stream(out: Blocks, events: AsyncIterator[Any]) -> AsyncIterator[str]:
    def sse(batch: list[tuple[str, dict[str, Any]]]) -> str:
        return "".join(f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"
                       for kind, data in batch)

    yield sse(out.start())
    try:
        async for e in events:
            yield sse(out.feed(e))
    except ApiError as exc:  # after the stream began: Anthropic's error event
        yield sse([("error", {"error": {"type": "api_error", "message": exc.message}})])


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    """The prompt's positions as the chat route counts them (an image counts its embedding positions)."""
    state = state_of(request)
    state.check_model(body.model)
    messages = _messages(body)
    media = await state.load_media(messages)
    prompt = await run_in_threadpool(state.engine.prepare, messages, _tools(body), _thinking(body), media)
    try:
        return {"input_tokens": Conversation._positions(prompt.units)}
    finally:
        prompt.close()
