"""OpenAI's Responses API (/v1/responses), what the OpenAI Agents SDK and Codex speak: a translation onto the chat
route's scheduler and engine. Input items become chat-template messages; the scheduler's events become output items
and the standard stream events. A non-streamed response is the streamed one's last snapshot (one code path).

Stateless unless ``store: true``; stored responses (response_store.py) continue with ``previous_response_id``."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..runtime.engine import Finished
from ..runtime.grammar import json_grammar, tool_call_grammar
from ..runtime.parsers import THINK_CLOSE, ReasoningDelta, TextDelta, ToolCall
from .agent_schemas import FunctionCallItem, FunctionCallOutputItem, MessageItem, NamedFunction, ResponsesRequest
from .app import ApiError, State, first_and_rest, state_of
from .openai_api import make_sampling
from .response_store import ResponseStore
from .scheduler import Job
from .schemas import FunctionDef, Tool

router = APIRouter()
# why a reply stopped early -> the Responses API's incomplete_details.reason
INCOMPLETE = {"length": "max_output_tokens", "context": "max_output_tokens", "cancelled": "interrupted"}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _parts(content: str | list[Any], where: str) -> str | list[dict[str, Any]]:
    """Message or tool-output content -> the template's parts (text, image)."""
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        if p.type == "input_file" or (p.type == "input_image" and not p.image_url):
            raise ApiError(400, f"{p.type} by file is not supported (there is no Files API here): send images as "
                                "image_url (a data URI or a URL)", param=f"{where}.{j}")
        out.append({"type": "image", "url": p.image_url} if p.type == "input_image" else
                   {"type": "text", "text": p.text or p.refusal or ""})
    return out


def _arguments(text: str, where: str) -> dict[str, Any]:
    try:
        arguments = json.loads(text or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ApiError(400, "function_call arguments must be a JSON object", param=f"{where}.arguments")
    return arguments


def conversation(items: str | list[Any]) -> list[dict[str, Any]]:
    """Input items -> chat-template messages: function calls join the assistant turn before them, a reasoning item
    becomes the next assistant turn's reasoning, a function call's output is a tool message named after its call."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    reasoning: list[str] = []
    names: dict[str, str] = {}
    for i, item in enumerate(items):
        where = f"input.{i}"
        if isinstance(item, MessageItem):
            out.append({"role": "system" if item.role == "developer" else item.role,
                        "content": _parts(item.content, f"{where}.content")})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"type": "function", "id": item.call_id,
                    "function": {"name": item.name, "arguments": _arguments(item.arguments, where)}}
            if not (out and out[-1]["role"] == "assistant"):
                out.append({"role": "assistant", "content": ""})
            out[-1].setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "name": names.get(item.call_id),
                        "content": _parts(item.output, f"{where}.output")})
        else:  # reasoning: its text, else its summary
            reasoning += [p.text or "" for p in (item.content or item.summary)]
            continue
        if out[-1]["role"] == "assistant" and reasoning:
            out[-1]["reasoning_content"], reasoning = "\n".join(reasoning), []
    return out


def _tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    if not body.tools or body.tool_choice == "none":
        return None
    hosted = sorted({t.type for t in body.tools if t.type != "function"})
    if hosted:
        raise ApiError(400, f"tool types {hosted} are not supported: only function tools run here", param="tools")
    return [Tool(function=FunctionDef(name=t.name, description=t.description, parameters=t.parameters)).model_dump()
            for t in body.tools]


def _grammar(body: ResponsesRequest, tools: list[dict[str, Any]] | None) -> str | None:
    """A forced call first (the text format then shapes the answer after the tool's output), else the format."""
    fmt = body.text.format if body.text else None
    if tools and body.tool_choice == "required":
        return tool_call_grammar(tools)
    if tools and isinstance(body.tool_choice, NamedFunction):
        return tool_call_grammar(tools, body.tool_choice.name)
    if fmt is not None and fmt.type == "json_object":
        return json_grammar()
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise ApiError(400, "text.format json_schema needs a schema", param="text.format.schema")
        return json_grammar(fmt.schema_)
    return None


def _skeleton(body: ResponsesRequest, model: str, thinking: bool) -> dict[str, Any]:
    dump = lambda v: v.model_dump(by_alias=True, exclude_none=True) if hasattr(v, "model_dump") else v  # noqa: E731
    return {"id": _id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": model, "output": [], "error": None, "incomplete_details": None, "usage": None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id, "store": body.store,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "temperature": body.temperature, "top_p": body.top_p, "truncation": "disabled",
            "text": {"format": dump(body.text.format) if body.text and body.text.format else {"type": "text"}},
            "tool_choice": dump(body.tool_choice) or "auto", "tools": [dump(t) for t in body.tools or []],
            "metadata": body.metadata or {}}


class Output:
    """The scheduler's events -> output items and the stream events that build them, with sequence numbers."""

    def __init__(self, response: dict[str, Any], think_close: int | None) -> None:
        self.response, self.think_close, self.seq = response, think_close, 0
        self.open: dict[str, Any] | None = None  # the reasoning or message item receiving deltas

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **copy.deepcopy(fields)}

    def _snapshot(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=self.response)

    def start(self) -> list[dict[str, Any]]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.response["output"].append(item)
        return [self._event("response.output_item.added", output_index=len(self.response["output"]) - 1, item=item)]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.response["output"][-1]["id"], "output_index": len(self.response["output"]) - 1}

    def _open(self, kind: str) -> list[dict[str, Any]]:
        if self.open is not None and self.open["type"] == kind:
            return []
        events = self._close()
        if kind == "reasoning":
            self.open = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": []}
            return events + self._add(self.open)
        self.open = {"id": _id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        events += self._add(self.open)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.open["content"].append(part)
        return events + [self._event("response.content_part.added", **self._where(), content_index=0, part=part)]

    def _close(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        where = {**self._where(), "content_index": 0}
        if item["type"] == "reasoning":
            text = item["content"][0]["text"] if item["content"] else ""
            events = [self._event("response.reasoning_text.done", **where, text=text)]
        else:
            item["status"] = "completed"
            part = item["content"][0]
            events = [self._event("response.output_text.done", **where, text=part["text"], logprobs=[]),
                      self._event("response.content_part.done", **where, part=part)]
        return events + [self._event("response.output_item.done", output_index=where["output_index"], item=item)]

    def feed(self, e: Any) -> list[dict[str, Any]]:
        if isinstance(e, ReasoningDelta):
            events = self._open("reasoning")
            if not self.open["content"]:
                self.open["content"].append({"type": "reasoning_text", "text": ""})
            self.open["content"][0]["text"] += e.text
            return events + [self._event("response.reasoning_text.delta", **self._where(), content_index=0,
                                         delta=e.text)]
        if isinstance(e, TextDelta):
            events = self._open("message")
            self.open["content"][0]["text"] += e.text
            return events + [self._event("response.output_text.delta", **self._where(), content_index=0,
                                         delta=e.text, logprobs=[])]
        if isinstance(e, ToolCall):
            return self._call(e)
        if isinstance(e, Finished):
            return self._finish(e)
        return []

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        item = {"id": _id("fc"), "type": "function_call", "status": "in_progress", "call_id": _id("call"),
                "name": call.name, "arguments": ""}
        events = self._close() + self._add(item)
        events.append(self._event("response.function_call_arguments.delta", **self._where(), delta=arguments))
        item |= {"arguments": arguments, "status": "completed"}
        events.append(self._event("response.function_call_arguments.done", **self._where(), name=call.name,
                                  arguments=arguments))
        return events + [self._event("response.output_item.done", output_index=self._where()["output_index"],
                                     item=item)]

    def _finish(self, done: Finished) -> list[dict[str, Any]]:
        events, s = self._close(), done.stats
        thought = [item for item in self.response["output"] if item["type"] == "reasoning"]
        reasoning_tokens = (0 if not thought else done.tokens.index(self.think_close)
                            if self.think_close in done.tokens else len(done.tokens))
        reason = INCOMPLETE.get(s.finish_reason)
        self.response |= {"status": "incomplete" if reason else "completed",
                          "incomplete_details": {"reason": reason} if reason else None,
                          "usage": {"input_tokens": s.prompt_tokens,
                                    "input_tokens_details": {"cached_tokens": s.cached_tokens},
                                    "output_tokens": s.generated_tokens,
                                    "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                                    "total_tokens": s.prompt_tokens + s.generated_tokens}}
        return events + [self._snapshot("response.incomplete" if reason else "response.completed")]

    def fail(self, err: ApiError) -> list[dict[str, Any]]:
        self.response |= {"status": "failed", "error": {"code": err.code or err.kind, "message": err.message}}
        return [self._snapshot("response.failed")]

    def reply_message(self) -> dict[str, Any]:
        """The reply as the next turn's history (for ``previous_response_id``)."""
        kinds = {k: [i for i in self.response["output"] if i["type"] == k]
                 for k in ("reasoning", "message", "function_call")}
        message: dict[str, Any] = {"role": "assistant",
                                   "content": "".join(m["content"][0]["text"] for m in kinds["message"])}
        if kinds["reasoning"]:
            message["reasoning_content"] = "".join(r["content"][0]["text"] for r in kinds["reasoning"] if r["content"])
        if kinds["function_call"]:
            message["tool_calls"] = [{"type": "function", "id": c["call_id"], "function": {
                "name": c["name"], "arguments": json.loads(c["arguments"])}} for c in kinds["function_call"]]
        return message


def _store_of(request: Request) -> ResponseStore:
    return request.app.state.responses


def _think_close(state: State) -> int | None:
    ids = state.engine.tokenize(THINK_CLOSE)
    return ids[0] if len(ids) == 1 else None


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Any:
    state, store = state_of(request), _store_of(request)
    state.check_model(body.model)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = store.get(body.previous_response_id)
        if previous is None:
            raise ApiError(404, f"previous response {body.previous_response_id!r} not found (responses are kept "
                                "only with store: true, in memory, a bounded number)",
                           param="previous_response_id", code="response_not_found")
        history = previous.messages
    turn = history + conversation(body.input)
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + turn
    tools = _tools(body)
    thinking = not (body.reasoning and body.reasoning.effort == "none")
    sampling = make_sampling(state, body, body.max_output_tokens, [], _grammar(body, tools))
    job = Job(messages, tools, thinking, sampling, asyncio.get_running_loop(),
              media=await state.load_media(messages), timeout_s=state.options.request_timeout_s)
    _, events = await first_and_rest(state.submit(job))
    out = Output(_skeleton(body, state.options.model_name, thinking), _think_close(state) if thinking else None)

    def keep() -> None:
        if body.store and out.response["status"] != "failed":
            store.put(out.response, turn + [out.reply_message()])

    if body.stream:
        return StreamingResponse(_stream(out, events, keep), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    out.start()
    async for e in events:
        out.feed(e)
    keep()
    return out.response


async def _stream(out: Output, events: AsyncIterator[Any], keep: Any) -> AsyncIterator[str]:
    def sse(batch: list[dict[str, Any]]) -> str:
        return "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n" for e in batch)

    yield sse(out.start())
    try:
        async for e in events:
            yield sse(out.feed(e))
    except ApiError as exc:  # after the stream began: the stream's own terminal event, as Codex expects
        yield sse(out.fail(exc))
        return
    keep()


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Any:
    found = _store_of(request).get(response_id)
    if found is None:
        raise ApiError(404, f"response {response_id!r} not found", param="response_id", code="response_not_found")
    return found.response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Any:
    if not _store_of(request).delete(response_id):
        raise ApiError(404, f"response {response_id!r} not found", param="response_id", code="response_not_found")
    return {"id": response_id, "object": "response.deleted", "deleted": True}
