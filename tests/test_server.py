"""`interns1 serve` over real HTTP on loopback, driven by the real `openai` and `ollama` client packages."""

from __future__ import annotations

import base64
import json
import random
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema_rs
import ollama
import openai
import pytest
from serve_fixture import serving

from interns1_local.synth import write_clip, write_image

MODEL = "intern-s1"
# maxLength: under a grammar, random weights would otherwise write the string until max_tokens
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "required": ["city"],
                                                           "properties": {"city": {"type": "string", "maxLength": 12}}}}}


@pytest.fixture(scope="module")
def files(converted):
    return converted("f16", "f16")


@pytest.fixture(scope="module")
def server(files):
    with serving(files.model.path.parent, "--parallel", "8", "--ctx-size", "4096") as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


def _metric(server: str, name: str, headers: dict[str, str] | None = None) -> float:
    request = urllib.request.Request(server + "/metrics", headers=headers or {})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def _wait_for_metric(server: str, name: str, value: float, why: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while _metric(server, name, headers) != value:
        assert time.monotonic() < deadline, why
        time.sleep(0.05)


def test_chat_plain_and_streaming_agree(client) -> None:
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Name a prime."}], "max_tokens": 12,
           "temperature": 0, "extra_body": {"enable_thinking": False}}
    whole = client.chat.completions.create(**ask)
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: from the KV cache
    assert [m.id for m in client.models.list().data] == [MODEL]


@pytest.mark.parametrize("switch", [{}, {"enable_thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}},
                                    {"reasoning_effort": "none"}])
def test_reasoning_content_follows_the_switch(client, switch) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Why?"}], max_tokens=8,
                                           temperature=0, extra_body=switch)
    message = reply.choices[0].message.model_dump()
    if switch:  # thinking off: nothing is reasoning
        assert message["reasoning_content"] is None and message["content"]
    else:  # thinking on: this random model never closes </think>, so all of it is reasoning
        assert message["reasoning_content"] and message["content"] == ""
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Why?"}], max_tokens=8,
                                            temperature=0, extra_body=switch, stream=True)
    field = "content" if switch else "reasoning_content"
    streamed = "".join(getattr(c.choices[0].delta, field, None) or "" for c in stream if c.choices)
    assert streamed == message[field]


def test_image_message(client, png_b64) -> None:
    content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64}"}},
               {"type": "text", "text": "What is this?"}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                           max_tokens=4, temperature=0, extra_body={"enable_thinking": False})
    assert reply.usage.prompt_tokens > 256  # the image's 256 positions are in the prompt


def test_video_message(client, tmp_path) -> None:
    """OpenAI has no video part; the server takes vLLM's spelling, {"type": "video_url", "video_url": {"url": ...}},
    with how many frames to sample. A file that is not a video is a 400 that says so."""
    clip = base64.b64encode(write_clip(tmp_path / "clip.mp4", frames=20).read_bytes()).decode()

    def ask(url: str, **extra: object):
        content = [{"type": "video_url", "video_url": {"url": url, **extra}}, {"type": "text", "text": "What moves?"}]
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                              max_tokens=4, temperature=0, extra_body={"enable_thinking": False})

    reply = ask(f"data:video/mp4;base64,{clip}", frames=3)
    assert 3 * 258 < reply.usage.prompt_tokens < 4 * 258  # three frames of 256 positions, each in <img></img>
    again = ask(f"data:video/mp4;base64,{clip}", frames=3)
    assert again.usage.prompt_tokens_details.cached_tokens >= 3 * 256  # the same video: from the KV cache
    junk = base64.b64encode(b"\x00\x01 not a video" * 100).decode()
    with pytest.raises(openai.BadRequestError, match="not a video"):
        ask(f"data:video/mp4;base64,{junk}")
    with pytest.raises(openai.BadRequestError, match="frames must be"):
        ask(f"data:video/mp4;base64,{clip}", frames=65)


def test_tool_loop_reuses_the_cache(client) -> None:
    """A three-step tool loop (call, call, answer): each step's prompt starts with the whole previous one, from the KV
    cache (the released template rebuilds the loop's turns the same way each time), and the reasoning a client sends
    back reaches the prompt."""
    messages: list[dict] = [{"role": "user", "content": "What's the weather in Paris?"}]
    ask = dict(model=MODEL, tools=[WEATHER], temperature=0, extra_body={"enable_thinking": False})
    previous = None
    for step in range(2):
        # tool_choice="required" makes the server constrain the output to one call (random weights would not choose it)
        reply = client.chat.completions.create(messages=messages, tool_choice="required", max_tokens=120, **ask)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_") and call.function.name == "get_weather"
        assert "city" in json.loads(call.function.arguments)
        if previous is not None:
            assert reply.usage.prompt_tokens_details.cached_tokens >= previous.usage.prompt_tokens
        previous = reply
        messages += [choice.message.model_dump(exclude_none=True) | {"reasoning_content": f"Step {step}."},
                     {"role": "tool", "tool_call_id": call.id, "content": f'{{"temp_c": {18 + step}}}'}]
    answer = client.chat.completions.create(messages=messages, max_tokens=4, **ask)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens_details.cached_tokens >= previous.usage.prompt_tokens
    without = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    hidden = client.chat.completions.create(messages=without, max_tokens=1, **ask)
    assert answer.usage.prompt_tokens > hidden.usage.prompt_tokens  # "Step 0." ... inside the loop's <think> blocks


def test_both_apis_pass_the_reasoning_sent_back_to_the_template() -> None:
    from interns1_local.server import ollama_api, openai_api
    from interns1_local.server.schemas import Message, OllamaMessage

    sent = openai_api._messages([Message(role="assistant", content=None, reasoning_content="Look it up.")])
    assert sent == [{"role": "assistant", "content": "", "reasoning_content": "Look it up."}]
    sent = ollama_api._messages([OllamaMessage(role="assistant", content="", thinking="Look it up.")])
    assert sent == [{"role": "assistant", "content": "", "reasoning_content": "Look it up."}]


def test_tool_choice_naming_a_function_calls_it(client) -> None:
    clock = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    for name in ("get_weather", "get_time"):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather or time?"}], tools=[WEATHER, clock],
            tool_choice={"type": "function", "function": {"name": name}}, max_tokens=120, temperature=0,
            extra_body={"enable_thinking": False})
        assert [c.function.name for c in reply.choices[0].message.tool_calls] == [name]


def test_json_schema_output_validates(client) -> None:
    schema = {"type": "object", "properties": {"element": {"type": "string", "maxLength": 12},
                                               "atomic_number": {"type": "integer"}},
              "required": ["element", "atomic_number"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe iron as JSON."}], max_tokens=200, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "element", "schema": schema}},
        extra_body={"enable_thinking": False})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema_rs.validate(schema, json.loads(reply.choices[0].message.content))


def _photo_b64(seed: int, size: tuple[int, int] = (640, 480)) -> str:
    """A PNG of random pixels: 640x480 is InternVL's 4x3 grid plus a thumbnail, 13 tiles."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_detail_and_ollama_max_tiles_lower_the_tiles(client, server) -> None:
    def prompt_tokens(detail: str) -> int:
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_photo_b64(1)}",
                                                       "detail": detail}}, {"type": "text", "text": "What is this?"}]
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                              max_tokens=1, extra_body={"enable_thinking": False}).usage.prompt_tokens

    assert prompt_tokens("high") - prompt_tokens("low") == 12 * 256 == prompt_tokens("auto") - prompt_tokens("low")
    api = ollama.Client(host=server, timeout=300)
    evaluated = [api.chat(model=MODEL, messages=[{"role": "user", "content": "Hi", "images": [_photo_b64(seed)]}],
                          think=False, options={"num_predict": 1, **limit}).prompt_eval_count
                 for seed, limit in ((2, {"max_tiles": 1}), (3, {}))]  # new pixels: no tile comes from a cache
    assert evaluated[1] - evaluated[0] == 12 * 256
    bad = httpx.post(server + "/v1/chat/completions", timeout=60, json={"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png", "detail": "huge"}}]}]})
    assert bad.status_code == 400 and "detail" in bad.text


def test_ollama_client(server, tmp_path) -> None:
    fresh_png_b64 = base64.b64encode(write_image(tmp_path / "small.png", size=200).read_bytes()).decode()
    api = ollama.Client(host=server, timeout=300)
    assert [m.model for m in api.list().models] == [f"{MODEL}:latest"]
    on = api.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], think=True,
                  options={"num_predict": 6, "temperature": 0})
    assert on.message.thinking and on.done and on.eval_count == 6
    off = api.chat(model=MODEL, messages=[{"role": "user", "content": "Hi", "images": [fresh_png_b64]}], think=False,
                   options={"num_predict": 6, "temperature": 0})
    # an image no earlier request sent: its 256 positions are evaluated, none come from the cache
    assert not off.message.thinking and off.message.content and off.prompt_eval_count > 256
    parts = list(api.generate(model=MODEL, prompt="Once upon a time", think=False, stream=True,
                              options={"num_predict": 5, "temperature": 0}))
    assert parts[-1].done and parts[-1].eval_count == 5 and "".join(p.response for p in parts)
    assert "vision" in api.show(MODEL).capabilities


def _stream_text(client: openai.OpenAI, prompt: str) -> str:
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=24, temperature=0, stream=True,
                                            extra_body={"enable_thinking": False})
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_eight_parallel_streams_equal_each_run_alone(client) -> None:
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(8)]
    alone = [_stream_text(client, p) for p in prompts]
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _stream_text(client, p), prompts))
    print(f"8 parallel streams in {time.perf_counter() - started:.2f} s")
    assert together == alone


# A reply that cannot end early: a grammar for a JSON string of at least 1500 characters (random weights may
# otherwise pick the end-of-turn token after a few tokens, and how soon depends on the batch they decode in).
LONG = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 1500}}, "required": ["story"]}}}


def test_disconnect_frees_the_sequence(server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 3000,
            "stream": True, "enable_thinking": False, "temperature": 0, "response_format": LONG}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as response:
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        for _ in range(3):
            assert '"finish_reason": null' in next(events)
        assert _metric(server, "interns1_active_sequences") == 1
    _wait_for_metric(server, "interns1_active_sequences", 0, "the sequence of a gone client was not freed")
    assert _metric(server, 'interns1_finished_total{reason="cancelled"}') >= 1


def test_a_shared_prefix_is_evaluated_once(client) -> None:
    """A long system prompt evaluated for one request is reused by the next, even while the first still decodes on
    its own sequence (the prefix is shared between sequences, not evaluated again)."""
    system = "You are a meticulous chemist. " * 60
    ask = lambda q, n: client.chat.completions.create(  # noqa: E731
        model=MODEL, max_tokens=n, temperature=0, extra_body={"enable_thinking": False},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": q}])
    with ThreadPoolExecutor(1) as pool:
        long_one = pool.submit(ask, "Write at length about benzene.", 200)
        time.sleep(1.0)  # the first request is decoding now
        second = ask("What is ethanol?", 4)
        first = long_one.result()
    assert first.usage.prompt_tokens > 300
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 20


@pytest.fixture(scope="module")
def strict(files, tmp_path_factory):
    """One sequence, a queue of one, an API key, a file root and a small body limit."""
    root = tmp_path_factory.mktemp("allowed")
    with serving(files.model.path.parent, "--parallel", "1", "--queue", "1", "--api-key", "sesame",
                 "--allow-file-root", str(root), "--max-body", "1M", "--ctx-size", "2048") as url:
        yield url, root


def test_full_queue_answers_429(strict) -> None:
    url, _ = strict
    headers = {"Authorization": "Bearer sesame"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 1500,
            "stream": True, "enable_thinking": False, "response_format": LONG}
    results: list[int] = []
    release = threading.Event()

    def hold() -> None:  # a streaming client that goes away when told (its sequence is freed at once)
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
            results.append(r.status_code)
            for _ in r.iter_lines():
                if release.is_set():
                    break

    threads = [threading.Thread(target=hold) for _ in range(2)]  # one decoding, one waiting
    threads[0].start()
    _wait_for_metric(url, "interns1_active_sequences", 1, "the first request never started", headers)
    threads[1].start()
    _wait_for_metric(url, "interns1_queue_depth", 1, "the second request never queued", headers)
    busy = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=30)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    release.set()
    for t in threads:
        t.join(timeout=120)
    assert results == [200, 200]


OK_MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name, request_kwargs, status, needle", [
    ("malformed json", {"content": b'{"model": "intern-s1", "messages": ['}, 400, "JSON"),
    ("wrong types", {"json": {"model": MODEL, "messages": "hi"}}, 400, "messages"),
    ("empty messages", {"json": {"model": MODEL, "messages": []}}, 400, "messages"),
    ("unknown model", {"json": {"model": "gpt-9", "messages": OK_MSG}}, 404, "not found"),
    ("huge max_tokens", {"json": {"model": MODEL, "messages": OK_MSG, "max_tokens": 10**9}}, 400, "context"),
    ("n > 1", {"json": {"model": MODEL, "messages": OK_MSG, "n": 2}}, 400, "n > 1"),
    ("bad base64 image", {"json": {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%not-base64"}}]}]}}, 400, "base64"),
    ("not an image", {"json": {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}}, 400, "image"),
    ("remote image not allowed", {"json": {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}}, 400, "URLs are not allowed"),
    ("path outside the root", {"json": {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}}, 400, "outside the allowed folder"),
    ("oversized body", {"content": b'{"pad": "' + b"x" * (2 * 2**20) + b'"}'}, 413, "larger than"),
    ("bad json schema", {"json": {"model": MODEL, "messages": OK_MSG, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x"}}}}, 400, "schema"),
    ("bad tool arguments", {"json": {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}}, 400, "JSON"),
    ("tool_choice naming a function bare", {"json": {"model": MODEL, "messages": OK_MSG, "tools": [WEATHER],
                                                     "tool_choice": {"function": "get_weather"}}}, 400, "tool_choice"),
    ("tool_choice naming no tool", {"json": {"model": MODEL, "messages": OK_MSG, "tools": [WEATHER],
                                             "tool_choice": {"type": "function", "function": {"name": "x"}}}},
     400, "not among the tools"),
    # past Python's stack when parsed, and deep enough to overflow it when the template's inputs are walked
    ("tool arguments nested 5000 deep", {"json": {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "1", "function": {"name": "f", "arguments": "[" * 5000 + "]" * 5000}}]}]}}, 400, "nested"),
    ("tool arguments nested 900 deep", {"json": {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
        {"id": "1", "function": {"name": "f", "arguments": '{"a":' * 900 + "1" + "}" * 900}}]}]}}, 400, "nested"),
])
def test_bad_input_is_a_clear_4xx(strict, name, request_kwargs, status, needle) -> None:
    url, _ = strict
    headers = {"Authorization": "Bearer sesame", "Content-Type": "application/json"}
    r = httpx.post(url + "/v1/chat/completions", headers=headers, timeout=60, **request_kwargs)
    assert r.status_code == status, r.text
    assert needle.lower() in r.json()["error"]["message"].lower()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}])
def test_api_key_is_required_except_for_health(strict, headers) -> None:
    url, _ = strict
    assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
    assert httpx.post(url + "/api/chat", headers=headers, json={}).status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_ollama_errors_use_ollama_shape(strict) -> None:
    url, _ = strict
    r = httpx.post(url + "/api/chat", headers={"Authorization": "Bearer sesame"},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["@@@"]}]})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    deep = '{"a":' * 900 + "1" + "}" * 900  # Ollama's tool-call arguments are JSON, not JSON text
    r = httpx.post(url + "/api/chat", headers={"Authorization": "Bearer sesame", "Content-Type": "application/json"},
                   content=f'{{"model": "{MODEL}", "stream": false, "messages": [{{"role": "assistant", "content": "", '
                           f'"tool_calls": [{{"function": {{"name": "f", "arguments": {deep}}}}}]}}]}}')
    assert r.status_code == 400 and "nested" in r.json()["error"], r.text


def test_image_under_the_file_root_is_read(strict, png_b64) -> None:
    url, root = strict
    (root / "ok.png").write_bytes(base64.b64decode(png_b64))
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer sesame"}, timeout=120, json={
        "model": MODEL, "max_tokens": 2, "enable_thinking": False, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(root / "ok.png")}}]}]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 256


def _long_stream(max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Write."}], "max_tokens": max_tokens,
            "stream": True, "enable_thinking": False, "temperature": 0, "response_format": LONG}


# about 280 prompt tokens
FILLER = {"model": MODEL, "messages": [{"role": "user", "content": "alpha beta " * 140}], "max_tokens": 2,
          "enable_thinking": False, "temperature": 0}


def test_idle_caches_make_room_for_a_running_reply(files) -> None:
    """A finished reply's sequence keeps its cache for prefix reuse; when the one shared KV cache (512 cells here)
    has no room left for a running reply, those idle caches are dropped instead of ending the reply."""
    with serving(files.model.path.parent, "--parallel", "2", "--ctx-size", "512") as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=_long_stream(250), timeout=120) as response:
            lines = response.iter_lines()
            assert '"finish_reason": null' in next(line for line in lines if line.startswith("data:"))
            first = httpx.post(url + "/v1/chat/completions", json=FILLER, timeout=120).json()  # on the other sequence
            assert first["usage"]["prompt_tokens"] > 280  # with the running reply's 250 + prompt: more than 512
            chunks = [json.loads(line[5:]) for line in lines if line.startswith("data:") and line != "data: [DONE]"]
        assert "error" not in chunks[-1], chunks[-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert _metric(url, "interns1_cache_evictions_total") >= 1
        again = httpx.post(url + "/v1/chat/completions", json=FILLER, timeout=120).json()
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] < 50  # its cache was the one dropped


def test_idle_caches_make_room_for_a_new_prompt(files) -> None:
    """The same when a prompt is admitted: three sequences, one decoding, one idle holding a long prompt's cache, and a
    raw completion prompt (it shares no token with either, so it goes to the empty sequence) that fits only once the
    idle cache is dropped."""
    with serving(files.model.path.parent, "--parallel", "3", "--ctx-size", "512") as url:
        raw = {"model": MODEL, "prompt": "zeta eta " * 120, "max_tokens": 2, "temperature": 0}
        with httpx.stream("POST", url + "/v1/chat/completions", json=_long_stream(60), timeout=120) as response:
            lines = response.iter_lines()
            assert '"finish_reason": null' in next(line for line in lines if line.startswith("data:"))
            assert httpx.post(url + "/v1/chat/completions", json=FILLER, timeout=120).status_code == 200
            assert _metric(url, "interns1_cache_evictions_total") == 0
            new = httpx.post(url + "/v1/completions", json=raw, timeout=120)
            assert new.status_code == 200, new.text
            assert new.json()["usage"]["prompt_tokens"] > 200  # with the filler's 280 and the running reply: > 512
            assert _metric(url, "interns1_cache_evictions_total") >= 1
            assert not any('"error"' in line for line in lines)


# -- many clients at once --------------------------------------------------------------------------------------------
def _leave_before_the_reply(url: str, body: dict, delay: float) -> None:
    """Send a request and hang up after ``delay`` seconds, before reading a byte: during its prompt's evaluation."""
    data = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        time.sleep(delay)


def _leave_while_decoding(url: str, body: dict, chunks: int) -> None:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for _, line in zip(range(chunks), (line for line in response.iter_lines() if line.startswith("data:"))):
            pass


def _short_reply(client: openai.OpenAI, prompt: str) -> tuple[str, int]:
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=6,
                                           temperature=0, extra_body={"enable_thinking": False})
    return reply.choices[0].message.content, reply.usage.prompt_tokens


def test_a_disconnect_storm_leaves_every_sequence_free(server, client) -> None:
    """32 clients that hang up at random moments, 8 at a time (as many as there are sequences): during their prompt's
    evaluation (the socket closed after 0-40 ms) or while their reply streams (after 1-5 chunks). Afterwards every
    sequence is idle, and 8 parallel greedy replies are what each was alone before the storm. (Short replies: in the
    KV cache the storm left fragmented, a long random-weights reply may flip a near-tie, as any new cell layout can.)"""
    prompts = [f"Question {i}: what is {i} times {i}?" for i in range(8)]
    before = [_short_reply(client, p) for p in prompts]
    rnd = random.Random(1234)
    talk = {"model": MODEL, "max_tokens": 400, "stream": True, "enable_thinking": False, "temperature": 0}
    prefill = {**talk, "messages": [{"role": "user", "content": "benzene ring " * 100}]}
    decode = {**talk, "messages": [{"role": "user", "content": "Tell a long story."}]}
    storm = [(_leave_before_the_reply, prefill, rnd.uniform(0, 0.04)) if i % 2 else
             (_leave_while_decoding, decode, rnd.randint(1, 5)) for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: job[0](server, job[1], job[2]), storm))
    _wait_for_metric(server, "interns1_active_sequences", 0, "a gone client's sequence was never freed")
    assert _metric(server, "interns1_queue_depth") == 0 and _metric(server, "interns1_idle_sequences") == 8
    assert _metric(server, 'interns1_finished_total{reason="cancelled"}') >= 16
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda p: _short_reply(client, p), prompts)) == before


@pytest.fixture(scope="module")
def no_queue(files):
    """Three sequences and no waiting queue."""
    with serving(files.model.path.parent, "--parallel", "3", "--queue", "0", "--ctx-size", "2048") as url:
        yield url


def _chat(url: str, i: int) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 8,
        "enable_thinking": False, "temperature": 0})


def test_queue_zero_serves_one_request_per_sequence(no_queue) -> None:
    """--queue 0: a request to the idle server is served, and so is a burst of as many requests as there are
    sequences sent at once (before the scheduler picked any up); one more while all three decode gets 429."""
    assert _chat(no_queue, 1).status_code == 200
    barrier = threading.Barrier(3)

    def at_once(i: int) -> int:
        barrier.wait()
        return _chat(no_queue, i).status_code

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(at_once, range(3))) == [200, 200, 200]
    release = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", no_queue + "/v1/chat/completions", json=_long_stream(1500), timeout=120) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                if release.is_set():
                    break

    holders = [threading.Thread(target=hold) for _ in range(3)]
    for t in holders:
        t.start()
    _wait_for_metric(no_queue, "interns1_active_sequences", 3, "three streams never decoded together")
    busy = _chat(no_queue, 4)
    release.set()
    for t in holders:
        t.join(timeout=120)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    _wait_for_metric(no_queue, "interns1_idle_sequences", 3, "a sequence did not come back")
    assert _chat(no_queue, 5).status_code == 200
