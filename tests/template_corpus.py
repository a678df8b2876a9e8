"""Conversations that exercise every branch of Intern-S1's chat template: text, parts (images, videos, types it
drops), system prompts, multi-turn reasoning, tools and multi-step tool loops with and without reasoning, developer and
environment roles. Each entry: (messages, tools); tests render each with thinking default/on/off and with and without
the generation prompt."""

from __future__ import annotations

from typing import Any

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather at a place.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "recherche", "description": "Cherche « dans » la base — 数据库 & <tags>.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}}}}
TOOLS = [WEATHER, SEARCH]


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _tool(text: Any) -> dict[str, Any]:
    return {"role": "tool", "content": text}


PARIS = _call("get_weather", {"city": "Paris"})
LYON = _call("get_weather", '{"city": "Lyon"}')  # arguments as a JSON string, inserted as written
ASK = _user("Weather in Paris, then Lyon?")
STEP1_REASONED = {"role": "assistant", "content": "", "reasoning_content": "Paris first.", "tool_calls": [PARIS]}
STEP2_REASONED = {"role": "assistant", "content": "Now Lyon.", "reasoning_content": "\nThen Lyon.\n",
                  "tool_calls": [LYON]}
STEP1_PLAIN = {"role": "assistant", "content": "", "tool_calls": [PARIS]}
STEP2_PLAIN = {"role": "assistant", "content": "Now Lyon.", "tool_calls": [LYON]}
NOISY_PARTS = [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": "a.png"}},
               {"type": "audio", "url": "a.wav"}, {"type": "image", "url": "b.png"}]

CORPUS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "single": ([_user("What is entropy?")], None),
    "system": ([{"role": "system", "content": "You are terse."}, _user("Hi")], None),
    "system-list": ([{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}, _user("Hi")], None),
    "system-empty": ([{"role": "system", "content": ""}, _user("Hi")], None),
    "system-newlines": ([{"role": "system", "content": "\n\nBe brief.\n\n"}, _user("Hi")], None),
    "user-leading-newlines": ([_user("\n\nHi\n")], None),
    "user-empty": ([_user("")], None),
    "multi-turn-think-in-content": ([
        _user("Name a noble gas."),
        {"role": "assistant", "content": "<think>\nHelium is one.\n</think>\n\nHelium."}, _user("Another?")], None),
    "multi-turn-reasoning-content": ([
        _user("Name a noble gas."), {"role": "assistant", "content": "Neon.", "reasoning_content": "Neon is next."},
        _user("Another?")], None),
    "last-turn-assistant": ([_user("2+2?"), {"role": "assistant", "content": "4"}], None),
    "last-turn-assistant-reasoned": ([
        _user("2+2?"), {"role": "assistant", "content": "<think>add</think>\n\n4"}], None),
    "last-turn-reasoning-content": ([
        _user("2+2?"), {"role": "assistant", "content": "4", "reasoning_content": "\n\nadd\n\n"}], None),
    "reasoning-and-think-in-content": ([
        _user("2+2?"), {"role": "assistant", "content": "<think>x</think>4", "reasoning_content": "add"}], None),
    "open-think-no-close": ([_user("2+2?"), {"role": "assistant", "content": "<think>adding"}], None),
    "reasoning-empty-string": ([_user("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": ""}],
                               None),
    "assistant-whitespace": ([_user("Hi"), {"role": "assistant", "content": "\n\n  "}], None),
    "text-parts": ([{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}],
                   None),
    "image-then-text": ([{"role": "user", "content": [{"type": "image", "url": "cat.png"},
                                                      {"type": "text", "text": "Describe this image."}]}], None),
    "text-image-text": ([{"role": "user", "content": [{"type": "text", "text": "Compare "},
                                                      {"type": "image", "url": "a.png"},
                                                      {"type": "text", "text": " and this."}]}], None),
    "two-images": ([{"role": "user", "content": [{"type": "image", "url": "a.png"}, {"type": "image", "url": "b.png"},
                                                 {"type": "text", "text": "Differences?"}]}], None),
    "video": ([{"role": "user", "content": [{"type": "video", "url": "v.mp4"}, {"type": "text", "text": "What happens?"}]}],
              None),
    "dropped-part-types": ([{"role": "user", "content": NOISY_PARTS}], None),
    "images-over-turns": ([
        {"role": "user", "content": [{"type": "image", "url": "a.png"}, {"type": "text", "text": "This?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "image", "url": "b.png"}, {"type": "text", "text": "And this?"}]}], None),
    "unicode": ([{"role": "system", "content": "Réponds en français — 简体 ok"}, _user("Ça va ? 👋 <b>&amp;</b>")],
                None),
    "tools-single": ([_user("Weather in Paris?")], [WEATHER]),
    "tools-two": ([_user("Find X")], TOOLS),
    "tools-with-system": ([{"role": "system", "content": "You call tools.\n"}, _user("Weather in Paris?")], TOOLS),
    "tools-empty-list": ([_user("Hi")], []),
    "tool-round-trip": ([ASK, {"role": "assistant", "content": "I will look it up.", "tool_calls": [PARIS]},
                         _tool('{"temp_c": 18}')], [WEATHER]),
    "tool-call-string-arguments": ([ASK, {"role": "assistant", "content": "", "tool_calls": [LYON]},
                                    _tool("12 °C")], [WEATHER]),
    "tool-call-flat": ([ASK, {"role": "assistant", "content": "x", "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Nice"}}]}, _tool("20")], [WEATHER]),
    "tool-calls-parallel": ([ASK, {"role": "assistant", "content": "Both.", "tool_calls": [PARIS, LYON]},
                             _tool("18"), _tool("12")], [WEATHER]),
    "tool-call-no-content-key": ([ASK, {"role": "assistant", "tool_calls": [PARIS]}, _tool("18")], [WEATHER]),
    "tool-call-unicode-arguments": ([_user("Cherche"), {"role": "assistant", "content": "", "tool_calls": [
        _call("recherche", {"q": "Zürich — 天气 \"quoted\"", "n": 3})]}, _tool('{"hits": []}')], TOOLS),
    "tool-loop-plain": ([ASK, STEP1_PLAIN, _tool("18"), STEP2_PLAIN, _tool("12")], [WEATHER]),
    "tool-loop-reasoned": ([ASK, STEP1_REASONED, _tool("18"), STEP2_REASONED, _tool("12")], [WEATHER]),
    "tool-loop-think-in-content": ([
        ASK, {"role": "assistant", "content": "<think>\nParis first.\n</think>\n", "tool_calls": [PARIS]},
        _tool("18"), {"role": "assistant", "content": "<think>Lyon</think>\n\nNow Lyon.", "tool_calls": [LYON]},
        _tool("12")], [WEATHER]),
    "tool-loop-finished": ([ASK, STEP1_REASONED, _tool("18"), STEP2_REASONED, _tool("12"),
                            {"role": "assistant", "content": "18 and 12 °C.", "reasoning_content": "Done."}],
                           [WEATHER]),
    "tool-loop-then-new-question": ([ASK, STEP1_REASONED, _tool("18"),
                                     {"role": "assistant", "content": "18 °C.", "reasoning_content": "Done."},
                                     _user("And Rome?"), {"role": "assistant", "content": "", "reasoning_content":
                                     "Rome now.", "tool_calls": [_call("get_weather", {"city": "Rome"})]},
                                     _tool("25")], [WEATHER]),
    "tool-result-parts": ([ASK, STEP1_PLAIN, {"role": "tool", "content": [{"type": "text", "text": "18"},
                                                                        {"type": "image", "url": "map.png"}]}],
                          [WEATHER]),
    "environment-role": ([ASK, STEP1_PLAIN, {"role": "environment", "content": "18"}], [WEATHER]),
    "developer-first": ([{"role": "developer", "content": "Answer in French."}, _user("Hi")], None),
    "developer-after-system": ([{"role": "system", "content": "S"}, {"role": "developer", "content": "D"},
                                _user("Hi")], TOOLS),
    "system-in-the-middle": ([_user("Hi"), {"role": "system", "content": "ignored"}, _user("Again")], None),
    "no-user": ([{"role": "system", "content": "S"}, {"role": "assistant", "content": "<think>r</think>Hello"}],
                None),
    "assistant-first": ([{"role": "assistant", "content": "Hello", "reasoning_content": "greet"}, _user("Hi")],
                        None),
    "tool-first": ([_tool("orphan result"), _user("Hi")], [WEATHER]),
}
