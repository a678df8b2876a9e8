"""OpenAI's Responses API on `interns1 serve`, over real HTTP on loopback, driven by the real `openai` package, the
OpenAI Agents SDK and a Codex-shaped request replayed from a file."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import httpx
import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel, Field
from serve_fixture import serving

from interns1_local.server.response_store import ResponseStore

MODEL = "intern-s1"
KEY = "sesame"
OFF = {"effort": "none"}  # thinking off: random weights never close </think>, so forced output needs it off
# maxLength: under a grammar, random weights would otherwise write the string until max_output_tokens
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 12}}}}
# the standard order of a message item's events, and of a whole stream's
MESSAGE_EVENTS = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
                  "response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def server(converted):
    with serving(converted("f16", "f16").model.path.parent, "--parallel", "4", "--ctx-size", "4096",
                 "--api-key", KEY, "--max-body", "2M") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _squeeze(types: list[str]) -> list[str]:
    """Event types with runs of the same delta collapsed, to compare with the standard order."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


def _events(client: openai.OpenAI, **ask) -> list:
    events = list(client.responses.create(**ask, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events


def test_plain_and_streamed_agree(client) -> None:
    ask = {"model": MODEL, "input": "Name a prime.", "max_output_tokens": 12, "temperature": 0, "reasoning": OFF}
    whole = client.responses.create(**ask)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 12 and whole.usage.output_tokens_details.reasoning_tokens == 0
    assert [item.type for item in whole.output] == ["message"] and whole.output_text
    events = _events(client, **ask)
    assert _squeeze([e.type for e in events]) == ["response.created", "response.in_progress", *MESSAGE_EVENTS,
                                                  "response.incomplete"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage.input_tokens_details.cached_tokens > 0  # the same prompt again: KV cache


def test_thinking_on_and_off(client) -> None:
    on = _events(client, model=MODEL, input="Why?", max_output_tokens=8, temperature=0)
    assert _squeeze([e.type for e in on]) == [
        "response.created", "response.in_progress", "response.output_item.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.output_item.done", "response.incomplete"]
    final = on[-1].response
    assert [item.type for item in final.output] == ["reasoning"]  # this random model never closes </think>
    thought = "".join(e.delta for e in on if e.type == "response.reasoning_text.delta")
    assert thought and final.output[0].content[0].text == thought
    assert final.usage.output_tokens_details.reasoning_tokens == final.usage.output_tokens == 8
    off = client.responses.create(model=MODEL, input="Why?", max_output_tokens=8, temperature=0, reasoning=OFF)
    assert [item.type for item in off.output] == ["message"] and off.output_text


def test_image_input(client, png_b64) -> None:
    content = [{"type": "input_image", "image_url": f"data:image/png;base64,{png_b64}"},
               {"type": "input_text", "text": "What is this?"}]
    reply = client.responses.create(model=MODEL, input=[{"role": "user", "content": content}], max_output_tokens=4,
                                    temperature=0, reasoning=OFF)
    assert reply.usage.input_tokens > 256  # the image's 256 positions are in the prompt


def test_function_call_round_trip(client) -> None:
    ask = {"model": MODEL, "tools": [WEATHER], "temperature": 0, "reasoning": OFF,
           "instructions": "You answer questions about the weather."}
    items: list = [{"role": "user", "content": "What's the weather in Paris?"}]
    # naming the tool makes the server constrain the output to one call (random weights would not choose it)
    events = _events(client, **ask, input=items, max_output_tokens=120,
                     tool_choice={"type": "function", "name": "get_weather"})
    assert _squeeze([e.type for e in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    first = events[-1].response
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert "city" in json.loads(call.arguments) and events[4].arguments == call.arguments
    items += [call.model_dump(exclude_none=True), {"type": "function_call_output", "call_id": call.call_id,
                                                   "output": '{"temp_c": 18}'}]
    second = client.responses.create(**ask, input=items, max_output_tokens=6)
    assert [item.type for item in second.output] == ["message"]
    assert second.usage.input_tokens_details.cached_tokens > first.usage.input_tokens // 2


def test_previous_response_id_continues_from_the_store(client) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada. " * 20, max_output_tokens=6, temperature=0,
                                    reasoning=OFF, store=True)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=6, temperature=0, reasoning=OFF, store=True)
    assert second.previous_response_id == first.id
    # the whole first turn, prompt and reply, is in the second prompt, and came from the KV cache
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(first.id)
    assert gone.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model=MODEL, input="hi", previous_response_id=first.id, reasoning=OFF)
    assert "not found" in unknown.value.body["message"]
    unstored = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, reasoning=OFF)
    with pytest.raises(openai.NotFoundError):  # stateless by default
        client.responses.retrieve(unstored.id)


def test_json_schema_output_validates(client) -> None:
    schema = {"type": "object", "properties": {"element": {"type": "string", "maxLength": 12},
                                               "atomic_number": {"type": "integer"}},
              "required": ["element", "atomic_number"], "additionalProperties": False}
    reply = client.responses.create(model=MODEL, input="Describe iron as JSON.", max_output_tokens=200,
                                    temperature=0, reasoning=OFF,
                                    text={"format": {"type": "json_schema", "name": "element", "schema": schema}})
    assert reply.status == "completed"
    jsonschema_rs.validate(schema, json.loads(reply.output_text))


def test_openai_agents_sdk_runs_an_agent_with_a_tool(server) -> None:
    agents = pytest.importorskip("agents")
    from openai.types.shared import Reasoning

    class Forecast(BaseModel):  # a structured final answer: its grammar ends the reply (random weights may not)
        summary: str = Field(max_length=12)

    agents.set_tracing_disabled(True)  # no export to OpenAI's servers
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"18 C and sunny in {city}"

    model = agents.OpenAIResponsesModel(MODEL, openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY,
                                                                  max_retries=0))
    # the first turn must call the tool (random weights would not); the SDK then resets tool_choice to auto
    settings = agents.ModelSettings(tool_choice="get_weather", max_tokens=200, temperature=0,
                                    reasoning=Reasoning(effort="none"))
    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather], model=model,
                         model_settings=settings, output_type=Forecast)
    result = asyncio.run(agents.Runner.run(agent, "What's the weather in Paris?", max_turns=3))
    assert len(calls) == 1
    kinds = [item.type for item in result.new_items]
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"], kinds
    assert isinstance(result.final_output, Forecast)


def _codex_request(tools: list[dict]) -> dict:
    """What Codex sends: instructions, its tools, reasoning settings, store off, a long input list with earlier
    turns' reasoning, calls and outputs. The call is forced (random weights would not choose one); effort "none"
    because this model's reasoning never ends."""
    said = lambda role, text: {"type": "message", "role": role,  # noqa: E731
                               "content": [{"type": "input_text", "text": text}]}
    history = [said("developer", "<permissions>workspace-write</permissions>"),
               said("user", "<environment_context>cwd=/repo</environment_context>")]
    for i in range(6):
        history += [said("user", f"step {i}"),
                    {"type": "reasoning", "id": f"rs_{i}", "summary": [{"type": "summary_text", "text": "Plan."}],
                     "content": None, "encrypted_content": None},
                    {"type": "function_call", "id": f"fc_{i}", "call_id": f"call_{i}", "name": "shell",
                     "arguments": json.dumps({"command": ["ls", f"dir{i}"]})},
                    {"type": "function_call_output", "call_id": f"call_{i}", "output": f"file{i}.txt\n"},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]}]
    return {"model": MODEL, "instructions": "You are Codex, a coding agent. " * 30, "input": history,
            "tools": tools, "tool_choice": {"type": "function", "name": "shell"}, "parallel_tool_calls": False,
            "reasoning": {"effort": "none", "summary": "auto"}, "store": False, "stream": True,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "0a1b2c"}


def test_codex_shaped_stream_replayed_from_a_file(server, tmp_path) -> None:
    shell = {"type": "function", "name": "shell", "description": "Runs a shell command", "strict": False,
             "parameters": {"type": "object", "required": ["command"], "additionalProperties": False,
                            "properties": {"command": {"type": "array", "maxItems": 3,
                                                       "items": {"type": "string", "maxLength": 8}}}}}
    plan = {"type": "function", "name": "update_plan", "description": "Updates the plan", "strict": False,
            "parameters": {"type": "object", "properties": {"explanation": {"type": "string"}}}}
    recorded = tmp_path / "codex-request.json"
    recorded.write_text(json.dumps(_codex_request([shell, plan])))
    events = []
    with httpx.stream("POST", server + "/v1/responses", content=recorded.read_bytes(), timeout=300,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    calls = [item for item in events[-1]["response"]["output"] if item["type"] == "function_call"]
    assert calls and calls == [item for item in done if item["type"] == "function_call"]
    assert calls[0]["name"] == "shell" and isinstance(json.loads(calls[0]["arguments"])["command"], list)
    assert events[-1]["response"]["usage"]["input_tokens"] > 500


@pytest.mark.parametrize("name, body, status, needle", [
    ("unknown previous id", {"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"}, 404, "not found"),
    ("wrong item type", {"model": MODEL, "input": [{"type": "bogus", "text": "x"}]}, 400, "input"),
    ("wrong part type", {"model": MODEL, "input": [{"role": "user", "content": [{"type": "video"}]}]}, 400, "input"),
    ("hosted tool", {"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, 400, "web_search"),
    ("file input", {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file"}]}]}, 400, "file"),
    ("bad call arguments", {"model": MODEL, "input": [{"type": "function_call", "call_id": "c", "name": "f",
                                                       "arguments": "{nope"}]}, 400, "JSON object"),
    ("unknown tool named", {"model": MODEL, "input": "hi", "tools": [WEATHER],
                            "tool_choice": {"type": "function", "name": "nope"}}, 400, "not among the tools"),
    ("oversize body", {"model": MODEL, "input": "x" * (3 * 2**20)}, 413, "larger than"),
])
def test_bad_input_in_openai_shape(server, name, body, status, needle) -> None:
    r = httpx.post(server + "/v1/responses", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle.lower() in error["message"].lower() and set(error) == {"message", "type", "param", "code"}


def test_store_is_bounded_by_count_and_bytes_least_recently_used_first() -> None:
    by_count = ResponseStore(max_items=2, max_bytes=10**6)
    for rid in "abc":
        by_count.put({"id": rid}, [])
        by_count.get("a")  # "a" stays the most recently used
    assert list(by_count.items) == ["c", "a"]  # "b" was the least recently used when "c" came
    assert by_count.get("b") is None
    by_bytes = ResponseStore(max_items=100, max_bytes=1000)
    for rid in "xyz":  # about 400 bytes each: the third pushes out the first
        assert by_bytes.put({"id": rid, "text": "w" * 380}, [])
    assert set(by_bytes.items) == {"y", "z"} and by_bytes.bytes == sum(v.size for v in by_bytes.items.values())
    assert not by_bytes.put({"id": "huge", "text": "w" * 2000}, []) and set(by_bytes.items) == {"y", "z"}
    assert by_bytes.delete("y") and not by_bytes.delete("y") and by_bytes.bytes == by_bytes.items["z"].size
