"""Streaming parser for Intern-S1 output: reasoning, answer text and InternLM-format tool calls (SPEC section 4).

The model's text arrives as deltas split at arbitrary points, tags included. The parser holds back only what could
still be the start of a tag, so ordinary text (anything without ``<``) is emitted as soon as it is fed.

Choices where the reference parsers differ (LMDeploy's ``intern-s1``/``qwen3`` parser, vLLM's ``qwen3`` parser):

- With thinking on, the output starts inside the reasoning (the prompt ends with a prefilled ``<think>``). An explicit
  ``<think>`` at the very start is accepted and dropped too (both references drop it). A ``<think>`` later in the
  reasoning is kept as reasoning text: the references strip the first one anywhere, but a second opening tag in the
  middle of a thought is content, not structure.
- One newline right after ``<think>`` is dropped: the model writes ``<think>\\n``; LMDeploy's older non-streaming
  parser did the same (``removeprefix('\\n')``). The references' streaming paths drop nothing.
- All newlines right after ``</think>`` are dropped, not just one: this is exactly what our chat template does to an
  assistant turn put back in the history (``content.split("</think>")[-1].lstrip("\\n")``), so the answer text a
  client sends back renders the same prompt the model saw. The references keep them (the answer starts ``"\\n\\n"``).
- The trailing newline before ``</think>`` stays in the reasoning: dropping it would hold back every reasoning delta
  that ends in a newline.
- Tool calls are recognised only in the answer, never inside the reasoning, where a model may draft one.
- With thinking off nothing is reasoning; ``<think>`` and ``</think>`` are plain text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from interns1_local.errors import ParserError

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ACTION_START = "<|action_start|>"
ACTION_END = "<|action_end|>"
PLUGIN = "<|plugin|>"

# The keys a tool call's JSON may carry its arguments under: InternLM writes "parameters", OpenAI-style "arguments".
_ARGUMENT_KEYS = ("parameters", "arguments")


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (the text between ``<think>`` and ``</think>``)."""

    text: str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer shown to the user; also an unparseable tool block, verbatim."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A complete tool call; ``raw`` is the whole block as the model wrote it, tags included."""

    name: str
    arguments: dict[str, Any] = field(hash=False)
    raw: str


Event = ReasoningDelta | TextDelta | ToolCall


class _Phase(Enum):
    OPENING = "opening"  # thinking on, nothing classified yet: an explicit <think> may still come
    REASONING = "reasoning"
    ANSWER = "answer"
    TOOL = "tool"  # inside <|action_start|> ... <|action_end|>; held until the block closes


class _Strip(Enum):
    NONE = "none"
    ONE = "one"  # drop one newline
    ALL = "all"  # drop every leading newline


@dataclass(frozen=True)
class _Rule:
    """How a phase ends: the tag that closes it, the phase after, and the newlines dropped after the tag."""

    closing_tag: str
    next_phase: _Phase
    strip_after: _Strip


_RULES: dict[_Phase, _Rule] = {
    _Phase.REASONING: _Rule(THINK_CLOSE, _Phase.ANSWER, _Strip.ALL),
    _Phase.ANSWER: _Rule(ACTION_START, _Phase.TOOL, _Strip.NONE),
    _Phase.TOOL: _Rule(ACTION_END, _Phase.ANSWER, _Strip.NONE),
}

_DELTA_TYPES: dict[_Phase, type[ReasoningDelta] | type[TextDelta]] = {
    _Phase.REASONING: ReasoningDelta,
    _Phase.ANSWER: TextDelta,
}


class OutputParser:
    """Turns streamed text deltas into events. One parser per response; call ``finish()`` at the end."""

    def __init__(self, thinking: bool) -> None:
        """``thinking``: whether the prompt was rendered with thinking on (so it ends with a prefilled ``<think>``)."""
        self._phase = _Phase.OPENING if thinking else _Phase.ANSWER
        self._strip = _Strip.ONE if thinking else _Strip.NONE
        self._pending = ""  # text not yet classified: a possible tag prefix, or an open tool block
        self._finished = False

    @property
    def reasoning(self) -> bool:
        """Whether the text so far leaves the reply inside its reasoning (thinking on, ``</think>`` not yet seen)."""
        return self._phase in (_Phase.OPENING, _Phase.REASONING)

    def feed(self, delta: str) -> list[Event]:
        """Consume one delta; return the events that are certain now (adjacent deltas of one kind merged)."""
        if self._finished:
            raise ParserError("OutputParser.feed() called after finish(); create a new OutputParser per response")
        self._pending += delta
        return _merge(self._drain(final=False))

    def finish(self) -> list[Event]:
        """Flush at the end of the stream: held text is emitted, an unterminated tool block becomes text."""
        if self._finished:
            return []
        self._finished = True
        return _merge(self._drain(final=True))

    def _drain(self, final: bool) -> list[Event]:
        events: list[Event] = []
        while True:
            if self._phase is _Phase.OPENING:
                if not self._leave_opening(final):
                    return events
                continue
            self._apply_strip()
            rule = _RULES[self._phase]
            at = self._pending.find(rule.closing_tag)
            if at < 0:
                events.extend(self._release(rule.closing_tag, final))
                return events
            events.extend(self._close(self._pending[:at]))
            self._pending = self._pending[at + len(rule.closing_tag):]
            self._phase, self._strip = rule.next_phase, rule.strip_after

    def _leave_opening(self, final: bool) -> bool:
        """Decide whether the output opens with an explicit ``<think>``; False while that is still undecided."""
        if self._pending.startswith(THINK_OPEN):
            self._pending = self._pending[len(THINK_OPEN):]
        elif THINK_OPEN.startswith(self._pending) and not final:
            return False
        self._phase = _Phase.REASONING
        return True

    def _apply_strip(self) -> None:
        if self._strip is _Strip.NONE or not self._pending:
            return
        if self._strip is _Strip.ONE:
            self._pending = self._pending.removeprefix("\n")
            self._strip = _Strip.NONE
            return
        self._pending = self._pending.lstrip("\n")
        # Keep dropping newlines in the next delta until the answer's first other character arrives.
        if self._pending:
            self._strip = _Strip.NONE

    def _release(self, tag: str, final: bool) -> list[Event]:
        """No closing tag in the pending text: emit all of it except a suffix that may be the tag's beginning."""
        if self._phase is _Phase.TOOL:
            if not final:
                return []
            block, self._pending = ACTION_START + self._pending, ""
            return [TextDelta(block)]
        keep = 0 if final else _partial_tag_length(self._pending, tag)
        cut = len(self._pending) - keep
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return [_DELTA_TYPES[self._phase](ready)] if ready else []

    def _close(self, text: str) -> list[Event]:
        """The current phase ends with ``text`` as its last content."""
        if self._phase is _Phase.TOOL:
            return [parse_tool_block(ACTION_START + text + ACTION_END)]
        return [_DELTA_TYPES[self._phase](text)] if text else []


def parse_output(text: str, thinking: bool) -> list[Event]:
    """Parse a complete (non-streamed) output; the same events as streaming it in any number of deltas."""
    parser = OutputParser(thinking)
    return _merge(parser.feed(text) + parser.finish())


def parse_tool_block(block: str) -> ToolCall | TextDelta:
    """Parse one ``<|action_start|><|plugin|>\\n{json}\\n<|action_end|>`` block; anything malformed is returned as text.

    The JSON needs a non-empty string ``name``; arguments come from ``parameters`` or ``arguments`` (an object, or a
    string holding one, as OpenAI clients write them) and default to ``{}``.
    """
    body = block.removeprefix(ACTION_START).removesuffix(ACTION_END).lstrip()
    if not body.startswith(PLUGIN):
        return TextDelta(block)  # e.g. <|interpreter|> blocks: code, not a function call
    try:
        call = json.loads(body[len(PLUGIN):])
    except json.JSONDecodeError:
        return TextDelta(block)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return TextDelta(block)
    arguments = _arguments(call)
    return ToolCall(call["name"], arguments, block) if arguments is not None else TextDelta(block)


def _arguments(call: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments as an object, or None when they are not one."""
    value: Any = next((call[key] for key in _ARGUMENT_KEYS if key in call), {})
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (text that must wait)."""
    start = text.find(tag[0], max(0, len(text) - len(tag) + 1))
    while start >= 0:
        if tag.startswith(text[start:]):
            return len(text) - start
        start = text.find(tag[0], start + 1)
    return 0


def _merge(events: list[Event]) -> list[Event]:
    """Join adjacent deltas of the same kind and drop empty ones; tool calls stay as they are."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, ToolCall):
            merged.append(event)
        elif event.text:
            last = merged[-1] if merged else None
            if type(last) is type(event):
                merged[-1] = type(event)(last.text + event.text)  # type: ignore[union-attr]
            else:
                merged.append(event)
    return merged
