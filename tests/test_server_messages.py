"""Anthropic's Messages API on `interns1 serve`, over real HTTP on loopback, driven by the real `anthropic` package
(which sends the key as x-api-key)."""

from __future__ import annotations


import anthropic
import httpx
import pytest
from serve_fixture import serving


MODEL = "intern-s1"
KEY = "sesame"
# maxLength: under a grammar, random weights would otherwise write the string until max_tokens
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "required": ["city"],
                            "properties": {"city": {"type": "string", "maxLength": 12}}}}
GREEDY = {"temperature": 0}  # the anthropic package no longer has a temperature argument; the API still does
STREAM_EVENTS = ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                 "message_delta", "message_stop"]


@pytest.fixture(scope="module")
def server(converted):
    with serving(converted("f16", "f16").model.path.parent, "--parallel", "4", "--ctx-size", "4096",
                 "--api-key", KEY, "--max-body", "2M") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key=KEY, max_retries=0, timeout=300)


def _squeeze(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if not (t == "content_block_delta" and i and types[i - 1] == t)]


def test_plain_and_streamed_agree(client) -> None:
    ask = {"model": MODEL, "max_tokens": 12, "extra_body": GREEDY,
           "messages": [{"role": "user", "content": "Name a prime."}]}
    whole = client.messages.create(**ask)
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 12
    assert [b.type for b in whole.content] == ["text"] and whole.content[0].text  # thinking is off by default
    events = list(client.messages.create(**ask, stream=True))
    assert _squeeze([e.type for e in events]) == STREAM_EVENTS
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == whole.content[0].text
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.stop_reason == "max_tokens"
    assert final.usage.cache_read_input_tokens > 0  # the same prompt again: from the KV cache


def test_stop_sequences_end_the_text_and_are_named(client) -> None:
    ask = {"model": MODEL, "max_tokens": 16, "extra_body": GREEDY,
           "messages": [{"role": "user", "content": "Count to ten."}]}
    free = client.messages.create(**ask).content[0].text
    stop = free[6:9]  # a piece of the greedy text: the same text, stopped where it first occurs
    cut = client.messages.create(**ask, stop_sequences=["never-in-it-xyz", stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == free[: free.index(stop)]


def test_thinking_blocks_on_and_off(client) -> None:
    ask = {"model": MODEL, "max_tokens": 8, "extra_body": GREEDY, "messages": [{"role": "user", "content": "Why?"}]}
    on = client.messages.create(**ask, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in on.content] == ["thinking"] and on.content[0].thinking  # never closes </think>
    streamed = list(client.messages.create(**ask, thinking={"type": "enabled", "budget_tokens": 1024}, stream=True))
    assert "".join(e.delta.thinking for e in streamed if e.type == "content_block_delta") == on.content[0].thinking
    off = client.messages.create(**ask, thinking={"type": "disabled"})
    assert [b.type for b in off.content] == ["text"]


def test_thinking_budget_ends_the_reasoning(client) -> None:
    """Past budget_tokens of reasoning, </think> is forced: the answer follows (random weights never close it)."""
    ask = {"model": MODEL, "max_tokens": 12, "extra_body": GREEDY, "messages": [{"role": "user", "content": "Why?"}]}
    free = client.messages.create(**ask, thinking={"type": "enabled", "budget_tokens": 1024})
    cut = client.messages.create(**ask, thinking={"type": "enabled", "budget_tokens": 4})
    assert [b.type for b in free.content] == ["thinking"]
    assert [b.type for b in cut.content] == ["thinking", "text"] and cut.content[1].text
    assert free.content[0].thinking.startswith(cut.content[0].thinking) and cut.content[0].thinking
    assert len(cut.content[0].thinking) < len(free.content[0].thinking)


def test_image_block(client, png_b64) -> None:
    content = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_b64}},
               {"type": "text", "text": "What is this?"}]
    reply = client.messages.create(model=MODEL, max_tokens=4, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": content}])
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 256  # the image's 256 positions


def test_tool_use_round_trip(client) -> None:
    messages: list = [{"role": "user", "content": "What's the weather in Paris?"}]
    # naming the tool makes the server constrain the output to one call (random weights would not choose it)
    first = client.messages.create(model=MODEL, max_tokens=120, extra_body=GREEDY, tools=[WEATHER], messages=messages,
                                   tool_choice={"type": "tool", "name": "get_weather"})
    assert first.stop_reason == "tool_use"
    use = first.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and "city" in use.input
    assert use.id.startswith("toolu_")
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": '{"temp_c": 18}'}]}]
    second = client.messages.create(model=MODEL, max_tokens=6, extra_body=GREEDY, tools=[WEATHER], messages=messages)
    assert second.stop_reason in ("end_turn", "max_tokens")
    first_prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens > first_prompt // 2


def test_count_tokens_equals_the_prompt_the_server_reports(client, png_b64) -> None:
    ask = {"model": MODEL, "system": "You are terse.", "tools": [WEATHER],
           "messages": [{"role": "user", "content": [
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_b64}},
               {"type": "text", "text": "Is it raining?"}]}]}
    counted = client.messages.count_tokens(**ask).input_tokens
    reply = client.messages.create(**ask, max_tokens=2, extra_body=GREEDY)
    assert counted == reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 256


@pytest.mark.parametrize("name, body, status, kind, needle", [
    ("wrong block type", {"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, 400,
     "invalid_request_error", "messages"),
    ("document block", {"messages": [{"role": "user", "content": [{"type": "document"}]}]}, 400,
     "invalid_request_error", "not supported"),
    ("server tool", {"messages": [{"role": "user", "content": "hi"}],
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400,
     "invalid_request_error", "server tools"),
    ("no max_tokens", {"max_tokens": None, "messages": [{"role": "user", "content": "hi"}]}, 400,
     "invalid_request_error", "max_tokens"),
    ("unknown model", {"model": "claude-9", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "not_found_error", "not found"),
    ("oversize body", {"messages": [{"role": "user", "content": "x" * (3 * 2**20)}]}, 413,
     "request_too_large", "larger than"),
])
def test_bad_input_in_anthropic_shape(server, name, body, status, kind, needle) -> None:
    full = {k: v for k, v in ({"model": MODEL, "max_tokens": 4} | body).items() if v is not None}
    r = httpx.post(server + "/v1/messages", json=full, headers={"x-api-key": KEY}, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind
    assert needle.lower() in r.json()["error"]["message"].lower()


def test_a_wrong_key_is_refused_in_anthropic_shape(server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=server, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "authentication_error"


def test_metrics_count_the_new_routes(server, client) -> None:
    client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    client.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(server + "/metrics", headers={"x-api-key": KEY}, timeout=10).text
    assert 'interns1_requests_total{route="/v1/messages/count_tokens",status="200"}' in text
    assert 'interns1_requests_total{route="/v1/messages",status="200"}' in text
