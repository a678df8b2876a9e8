"""Ollama's API, the subset its clients and UIs use: /api/chat, /api/generate (NDJSON streaming, ``thinking``),
/api/tags, /api/show, /api/version, /api/ps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .. import __version__
from ..runtime.engine import Finished, Stats
from ..runtime.grammar import json_grammar
from ..runtime.parsers import ReasoningDelta, TextDelta, ToolCall
from .app import ApiError, State, collect, first_and_rest, state_of
from .openai_api import make_sampling
from .scheduler import Job
from .schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaMessage, OllamaOptions, OllamaShowRequest

router = APIRouter()
OLLAMA_API_VERSION = "0.12.0"  # the Ollama API version whose fields we speak


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _sampling(state: State, options: OllamaOptions | None, fmt: Any) -> Any:
    o = options or OllamaOptions()
    grammar = None if fmt in (None, "") else json_grammar(None if fmt == "json" else fmt)
    max_tokens = None if o.num_predict is None or o.num_predict < 0 else max(o.num_predict, 1)
    return make_sampling(state, o, max_tokens, list(o.stop or []), grammar, o.repeat_penalty)


def _images(images: list[str] | None, options: OllamaOptions | None) -> list[dict[str, Any]]:
    # Ollama sends bare base64; the image loader takes data URIs (and sniffs the real format from the bytes).
    # options.max_tiles (ours) lowers the tiles of every image of the request.
    limit = {"max_tiles": options.max_tiles} if options and options.max_tiles else {}
    return [{"type": "image", "url": f"data:application/octet-stream;base64,{b}", **limit} for b in images or []]


def _durations(stats: Stats, started: float) -> dict[str, Any]:
    ns = 1_000_000_000
    return {"total_duration": int((time.monotonic() - started) * ns), "load_duration": 0,
            "prompt_eval_count": stats.evaluated_tokens, "prompt_eval_duration": int(stats.prompt_seconds * ns),
            "eval_count": stats.generated_tokens, "eval_duration": int(stats.generate_seconds * ns)}


def _reason(stats: Stats) -> str:
    return "length" if stats.finish_reason in ("length", "context") else "stop"


async def _respond(state: State, job: Job, stream: bool, shape: Any) -> Any:
    """Run the job; ``shape(text, thinking, calls)`` builds the route's payload. NDJSON when streaming."""
    started = time.monotonic()
    _, events = await first_and_rest(state.submit(job))
    model = state.options.model_name

    def line(payload: dict[str, Any], done: bool, stats: Stats | None = None) -> dict[str, Any]:
        out = {"model": model, "created_at": _now(), **payload, "done": done}
        if stats is not None:
            out |= {"done_reason": _reason(stats), **_durations(stats, started)}
        return out

    if stream:
        async def ndjson() -> AsyncIterator[str]:
            try:
                async for e in events:
                    if isinstance(e, ReasoningDelta):
                        yield json.dumps(line(shape("", e.text, []), False), ensure_ascii=False) + "\n"
                    elif isinstance(e, TextDelta):
                        yield json.dumps(line(shape(e.text, "", []), False), ensure_ascii=False) + "\n"
                    elif isinstance(e, ToolCall):
                        yield json.dumps(line(shape("", "", [e]), False), ensure_ascii=False) + "\n"
                    elif isinstance(e, Finished):
                        yield json.dumps(line(shape("", "", []), True, e.stats), ensure_ascii=False) + "\n"
            except ApiError as exc:
                yield json.dumps({"error": exc.message}) + "\n"

        return StreamingResponse(ndjson(), media_type="application/x-ndjson")
    reply = await collect(events)
    return line(shape(reply.text, reply.reasoning, reply.calls), True, reply.stats)


def _messages(messages: list[OllamaMessage], options: OllamaOptions | None = None) -> list[dict[str, Any]]:
    """Ollama messages -> what the chat template reads; ``thinking`` (an earlier reply's reasoning) becomes
    ``reasoning_content``, which Intern-S1's template shows for the turns of the current tool loop."""
    out = []
    for m in messages:
        parts = _images(m.images, options)
        msg: dict[str, Any] = {"role": m.role, "content": [*parts, {"type": "text", "text": m.content}]
                               if parts else m.content}
        if m.thinking is not None:
            msg["reasoning_content"] = m.thinking
        if m.tool_calls:
            msg["tool_calls"] = [{"type": "function", "function": c.function} for c in m.tool_calls]
        if m.tool_name:
            msg["name"] = m.tool_name
        out.append(msg)
    return out


@router.post("/api/chat")
async def chat(body: OllamaChatRequest, request: Request) -> Any:
    state = state_of(request)
    state.check_model(body.model)
    messages = _messages(body.messages, body.options)
    tools = [t.model_dump() for t in body.tools] if body.tools else None
    thinking = body.think is not False
    job = Job(messages, tools, thinking, _sampling(state, body.options, body.format), asyncio.get_running_loop(),
              media=await state.load_media(messages), timeout_s=state.options.request_timeout_s)

    def shape(text: str, think: str, calls: list[ToolCall]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if think:
            message["thinking"] = think
        if calls:
            message["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        return {"message": message}

    return await _respond(state, job, body.stream, shape)


@router.post("/api/generate")
async def generate(body: OllamaGenerateRequest, request: Request) -> Any:
    state = state_of(request)
    state.check_model(body.model)
    sampling = _sampling(state, body.options, body.format)
    if body.raw:
        if body.images:
            raise ApiError(400, "raw prompts cannot carry images", param="images")
        job = Job([], None, False, sampling, asyncio.get_running_loop(), raw_prompt=body.prompt,
                  timeout_s=state.options.request_timeout_s)
    else:
        parts = _images(body.images, body.options)
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": [*parts, {"type": "text", "text": body.prompt}] if parts else body.prompt}]
        thinking = body.think is not False
        job = Job(messages, None, thinking, sampling, asyncio.get_running_loop(),
                  media=await state.load_media(messages), timeout_s=state.options.request_timeout_s)

    def shape(text: str, think: str, calls: list[ToolCall]) -> dict[str, Any]:
        out: dict[str, Any] = {"response": text + "".join(c.raw for c in calls)}
        if think:
            out["thinking"] = think
        return out

    return await _respond(state, job, body.stream, shape)


def _details(state: State) -> dict[str, Any]:
    meta = state.engine.backend.metadata
    return {"format": "gguf", "family": meta.get("general.architecture", ""),
            "families": [meta.get("general.architecture", "")], "parameter_size": meta.get("general.size_label", ""),
            "quantization_level": str(meta.get("general.file_type", ""))}


def _listing(state: State) -> dict[str, Any]:
    path = state.engine.backend.path
    name = f"{state.options.model_name}:latest"
    return {"name": name, "model": name, "size": path.stat().st_size, "digest": "",
            "modified_at": datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(),
            "details": _details(state)}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    return {"models": [_listing(state_of(request))]}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"models": [{**_listing(state), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0,
                        "cpu_buffers": state.engine.backend.placement.as_dict()}]}


@router.post("/api/show")
async def show(body: OllamaShowRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    state.check_model(body.model or body.name or "")
    meta = state.engine.backend.metadata
    capabilities = ["completion", "thinking", "tools"] + (["vision"] if state.engine.backend.mtmd else [])
    info = {k: v for k, v in meta.items() if not isinstance(v, list) and k != "tokenizer.chat_template"}
    return {"modelfile": "", "parameters": "", "template": meta.get("tokenizer.chat_template", ""),
            "details": _details(state), "model_info": info, "capabilities": capabilities,
            "modified_at": _listing(state)["modified_at"]}


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_API_VERSION, "interns1_local": __version__}
