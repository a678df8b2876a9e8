"""The streaming output parser: unit cases, and property tests that split the same output at every boundary and at
random partitions and compare with an independent non-streaming reference written here."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interns1_local.errors import ParserError
from interns1_local.runtime.parsers import (
    ACTION_END,
    ACTION_START,
    Event,
    OutputParser,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    parse_output,
)


def stream(chunks: list[str], thinking: bool) -> list[Event]:
    parser = OutputParser(thinking)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return normalise(events + parser.finish())


def normalise(events: list[Event]) -> list[Event]:
    """Merge adjacent deltas of one kind and drop empty ones: the form in which splits must not matter."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, (ReasoningDelta, TextDelta)) and not event.text:
            continue
        if out and type(out[-1]) is type(event) and not isinstance(event, ToolCall):
            out[-1] = type(event)(out[-1].text + event.text)
        else:
            out.append(event)
    return out


_BLOCK = re.compile(r"\A<\|action_start\|>\s*<\|plugin\|>(?P<json>.*)<\|action_end\|>\Z", re.DOTALL)


def reference_block(block: str) -> Event:
    """The tool-block rules, written independently of the parser."""
    match = _BLOCK.match(block)
    try:
        call = json.loads(match["json"]) if match else None
    except ValueError:
        call = None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return TextDelta(block)
    args: Any = call["parameters"] if "parameters" in call else call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return TextDelta(block)
    return ToolCall(call["name"], args, block) if isinstance(args, dict) else TextDelta(block)


def reference(output: str, thinking: bool) -> list[Event]:
    """Non-streaming reference: str.partition on the whole output."""
    events: list[Event] = []
    if thinking:
        reasoning, closed, output = output.removeprefix("<think>").partition("</think>")
        events.append(ReasoningDelta(reasoning.removeprefix("\n")))
        if not closed:
            return normalise(events)
        output = output.lstrip("\n")
    while True:
        text, opened, rest = output.partition(ACTION_START)
        events.append(TextDelta(text))
        if not opened:
            return normalise(events)
        body, closed, output = rest.partition(ACTION_END)
        if not closed:
            events.append(TextDelta(ACTION_START + body))
            return normalise(events)
        events.append(reference_block(ACTION_START + body + ACTION_END))


def call_block(name: str, args: Any, key: str = "parameters") -> str:
    return f"{ACTION_START}<|plugin|>\n{json.dumps({'name': name, key: args}, ensure_ascii=False)}\n{ACTION_END}"


# ---------------------------------------------------------------------------------------------- unit cases


def test_thinking_on_implicit_open_tag() -> None:
    out = stream(["\nLet me think.", "\n</think>\n\nThe answer is 4."], thinking=True)
    assert out == [ReasoningDelta("Let me think.\n"), TextDelta("The answer is 4.")]


def test_thinking_on_explicit_open_tag() -> None:
    out = stream(["<think>", "\nLet me think.\n</think>", "\n\nFour."], thinking=True)
    assert out == [ReasoningDelta("Let me think.\n"), TextDelta("Four.")]


def test_only_one_newline_dropped_after_open_tag_and_all_after_close_tag() -> None:
    out = stream(["\n\nindented\n</think>\n", "\n", "\n", "  answer\n\nend"], thinking=True)
    assert out == [ReasoningDelta("\nindented\n"), TextDelta("  answer\n\nend")]


def test_thinking_off_is_all_text() -> None:
    assert stream(["Plain ", "answer."], thinking=False) == [TextDelta("Plain answer.")]


def test_think_tags_are_text_when_thinking_off() -> None:
    text = "<think>\nnot reasoning\n</think>\n\nstill text"
    assert stream([text[:3], text[3:]], thinking=False) == [TextDelta(text)]


def test_close_tag_never_emitted_keeps_everything_as_reasoning() -> None:
    tool = call_block("f", {})
    out = stream(["thinking ", "forever <", "/thi", tool], thinking=True)
    assert out == [ReasoningDelta("thinking forever </thi" + tool)]


def test_later_open_tag_is_reasoning_text() -> None:
    assert stream(["a <think> b</think>c"], thinking=True) == [ReasoningDelta("a <think> b"), TextDelta("c")]


def test_tool_call_with_text_around() -> None:
    block = call_block("get_weather", {"city": "Paris", "when": {"day": 1}})
    out = stream(["I will check.\n", block[:20], block[20:41], block[41:], "\nDone."], thinking=False)
    assert out == [TextDelta("I will check.\n"),
                   ToolCall("get_weather", {"city": "Paris", "when": {"day": 1}}, block), TextDelta("\nDone.")]


def test_two_calls_after_reasoning() -> None:
    first, second = call_block("a", {"x": 1}), call_block("b", {"y": [1, 2]})
    out = stream([f"plan\n</think>\n\n{first}\n{second}"], thinking=True)
    assert out == [ReasoningDelta("plan\n"), ToolCall("a", {"x": 1}, first), TextDelta("\n"),
                   ToolCall("b", {"y": [1, 2]}, second)]


@pytest.mark.parametrize("args", [{"q": "x"}, json.dumps({"q": "x"})], ids=["object", "json-string"])
def test_arguments_key_accepted(args: Any) -> None:
    block = call_block("search", args, key="arguments")
    assert stream([block], thinking=False) == [ToolCall("search", {"q": "x"}, block)]


def test_missing_arguments_default_to_empty() -> None:
    block = f'{ACTION_START}<|plugin|>\n{{"name": "now"}}\n{ACTION_END}'
    assert stream([block], thinking=False) == [ToolCall("now", {}, block)]


@pytest.mark.parametrize("body", [
    '<|plugin|>\n{"name": "f", "parameters": {"x": 1}\n',  # truncated JSON
    '<|plugin|>\n{"parameters": {}}\n',  # no name
    '<|plugin|>\n{"name": "f", "parameters": [1]}\n',  # arguments not an object
    '<|plugin|>\n["f"]\n',
    '<|interpreter|>\nprint(1)\n',  # code-interpreter block: not a function call
])
def test_malformed_block_is_text_verbatim(body: str) -> None:
    block = ACTION_START + body + ACTION_END
    assert stream(["before ", block, " after"], thinking=False) == [TextDelta(f"before {block} after")]


def test_unterminated_block_becomes_text_at_finish() -> None:
    text = f'ok {ACTION_START}<|plugin|>\n{{"name": "f", "param'
    assert stream([text[:10], text[10:]], thinking=False) == [TextDelta(text)]


def test_unicode() -> None:
    block = call_block("翻译", {"text": "熵 — ΔS ≥ 0 🧪"})
    out = stream(["思考：ΔS", "≥0 🧪\n</think>\n", "答案：", block], thinking=True)
    assert out == [ReasoningDelta("思考：ΔS≥0 🧪\n"), TextDelta("答案："),
                   ToolCall("翻译", {"text": "熵 — ΔS ≥ 0 🧪"}, block)]


def test_text_without_angle_bracket_is_not_held() -> None:
    parser = OutputParser(thinking=False)
    for piece in ["Hello", " wor", "ld\n", "!"]:
        assert parser.feed(piece) == [TextDelta(piece)]
    thinking = OutputParser(thinking=True)
    assert thinking.feed("Reason") == [ReasoningDelta("Reason")]
    assert thinking.feed("ing</think>An") == [ReasoningDelta("ing"), TextDelta("An")]
    assert thinking.feed("swer") == [TextDelta("swer")]


def test_only_a_possible_tag_prefix_is_held() -> None:
    parser = OutputParser(thinking=False)
    assert parser.feed("a < b <|act") == [TextDelta("a < b ")]
    assert parser.feed("ion_x") == [TextDelta("<|action_x")]
    assert parser.feed("<") == []
    assert parser.finish() == [TextDelta("<")]


def test_feed_after_finish_is_an_error() -> None:
    parser = OutputParser(thinking=False)
    parser.finish()
    with pytest.raises(ParserError, match="new OutputParser"):
        parser.feed("x")


# ---------------------------------------------------------------------------------------------- properties

EXAMPLES = [
    "\nA < B.\n</think>\n\nSo " + call_block("f", {"a": "ü"}) + "\n" + call_block("g", "{}", "arguments") + " end",
    "<think>\n" + "x<|action_start|>y\n</think>" + ACTION_START + "<|plugin|>{bad" + ACTION_END + "<|action_",
    "<thin",
    "<think></think>",
    "<</think>\n<|action_start|<|action_start|><|plugin|>\n{\"name\": \"n\"}\n<|action_end|><|action_end|>",
]


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("output", EXAMPLES)
def test_every_split_point_and_every_character(output: str, thinking: bool) -> None:
    whole = stream([output], thinking)
    assert whole == reference(output, thinking)
    assert stream(list(output), thinking) == whole
    for cut in range(len(output) + 1):
        assert stream([output[:cut], output[cut:]], thinking) == whole, cut


# Pieces that can form, break or imitate tags when glued together at random.
_PIECES = ["<", ">", "/", "|", "think", "<think>", "</think>", "</thi", "<|action_start|>", "<|action_",
           "<|plugin|>", "<|action_end|>", "\n", "\n\n", "{", "}", '"name"', ":", "é", "中", "🧪", " "]
_chaos = st.lists(st.sampled_from(_PIECES) | st.text("ab <|>\n", max_size=4), max_size=25).map("".join)
_plain = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), max_size=12)
_json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=6)
_call = st.builds(call_block, st.text(min_size=1, max_size=8), st.dictionaries(st.text(max_size=5), _json_value,
                                                                               max_size=3),
                  st.sampled_from(["parameters", "arguments"]))
_bad_call = _plain.map(lambda body: f"{ACTION_START}<|plugin|>\n{{{body}\n{ACTION_END}")
_answer = st.lists(_plain | _call | _bad_call, max_size=5).map("".join)
_structured = st.builds(lambda opening, reasoning, answer: f"{opening}{reasoning}</think>{answer}",
                        st.sampled_from(["", "<think>", "<think>\n", "\n"]), _plain, _answer)
_outputs = _structured | _answer | _chaos


@st.composite
def _partition(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=12))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(output=_outputs, thinking=st.booleans(), data=st.data())
def test_random_partitions_match_the_reference(output: str, thinking: bool, data: st.DataObject) -> None:
    chunks = data.draw(_partition(output))
    assert stream(chunks, thinking) == reference(output, thinking)


@settings(max_examples=150, deadline=None)
@given(output=_outputs, thinking=st.booleans())
def test_every_two_way_split_matches_whole(output: str, thinking: bool) -> None:
    whole = normalise(parse_output(output, thinking))
    for cut in range(len(output) + 1):
        assert stream([output[:cut], output[cut:]], thinking) == whole


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(_plain, max_size=8))
def test_plain_text_streams_with_no_delay(pieces: list[str]) -> None:
    parser = OutputParser(thinking=False)
    for piece in pieces:
        assert parser.feed(piece) == ([TextDelta(piece)] if piece else [])
    assert parser.finish() == []


def test_schema_grammars_keep_control_characters_out_of_strings() -> None:
    """llama-cpp-python's schema converter would let a constrained string hold a raw newline (invalid JSON: a forced
    tool call then came back as text); every string character rule must exclude U+0000-U+001F."""
    from interns1_local.runtime.grammar import json_grammar, tool_call_grammar

    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}}}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    for grammar in (json_grammar(schema), tool_call_grammar([tool])):
        chars = re.findall(r"^char ::= (\[[^\]]*\])", grammar, flags=re.MULTILINE)
        assert chars and all(r"\x00-\x1F" in c for c in chars), chars
