"""ChatTemplate renders byte-identical prompts to transformers' ``apply_chat_template`` (the reference renderer)."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2Tokenizer

import interns1_local
from interns1_local.errors import ChatTemplateError
from interns1_local.runtime.generation import sampling_defaults
from interns1_local.runtime.messages import media_parts, template_messages
from interns1_local.runtime.template import ChatTemplate

SYNTH_TEMPLATE = (Path(interns1_local.__file__).parent / "synth" / "chat_template.jinja").read_text()
BOS, EOS = "<|endoftext|>", "<|im_end|>"

TOOLS = [
    {"type": "function", "function": {
        "name": "météo", "description": "Temps actuel — 天气, ΔT in °C.",
        "parameters": {"type": "object", "required": ["ville"], "properties": {
            "ville": {"type": "string", "description": "Nom <de> la ville & \"pays\""},
            "options": {"type": "object", "properties": {"unités": {"enum": ["°C", "°F"]}, "jours": {
                "type": "array", "items": {"type": "integer"}}}}}}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]

CALL = {"type": "function",
        "function": {"name": "météo", "arguments": {"ville": "Zürich", "options": {"jours": [1, 2]}}}}

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "single-turn": [{"role": "user", "content": "What is entropy?"}],
    "system": [{"role": "system", "content": "Tu es bref."}, {"role": "user", "content": "Salut 👋"}],
    "images": [{"role": "user", "content": [
        {"type": "image", "url": "cat.png"}, {"type": "text", "text": "Compare with "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "video", "url": "v.mp4"}]}],
    "pil-image-part": [{"role": "user", "content": [
        {"type": "image", "image": Image.new("RGB", (2, 2))}, {"type": "text", "text": "What is this?"}]}],
    "multi-turn-reasoning": [
        {"role": "user", "content": "Name a noble gas."},
        {"role": "assistant", "content": "<think>\nHelium is one.\n</think>\n\nHelium."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Neon.", "reasoning_content": "Neon is next."},
        {"role": "user", "content": "And one more?"},
    ],
    "tool-round-trip": [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL]},
        {"role": "tool", "name": "météo", "content": "{\"temp_c\": 18, \"ciel\": \"dégagé\"}"},
    ],
    "tool-call-no-content": [
        {"role": "user", "content": "Time and weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "now", "arguments": "{}"}}, CALL]},
        {"role": "tool", "content": "12:00"},
        {"role": "environment", "content": "18 °C"},
    ],
}


@pytest.fixture(scope="module")
def reference() -> Qwen2Tokenizer:
    # The renderer does not depend on the vocabulary; a tokenizer object carries the template and special tokens.
    return Qwen2Tokenizer(vocab={"a": 0}, merges=[], bos_token=BOS, eos_token=EOS)


def render_both(reference: Qwen2Tokenizer, template: str, messages: list[dict[str, Any]],
                **kwargs: Any) -> tuple[str, str]:
    ours = ChatTemplate(template, bos_token=BOS, eos_token=EOS).render(messages, **kwargs)
    kwargs.setdefault("add_generation_prompt", True)  # our default; transformers' is False
    theirs = reference.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    return ours, theirs


@pytest.mark.parametrize("thinking", [None, True, False], ids=["think-default", "think-on", "think-off"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_synthetic_template_matches_transformers(reference: Qwen2Tokenizer, name: str, tools: Any,
                                                thinking: bool | None) -> None:
    kwargs: dict[str, Any] = {} if thinking is None else {"enable_thinking": thinking}
    ours, theirs = render_both(reference, SYNTH_TEMPLATE, CONVERSATIONS[name], tools=tools, **kwargs)
    assert ours == theirs


def test_synthetic_template_content_checks(reference: Qwen2Tokenizer) -> None:
    """The comparison above is only worth something if the renders contain what they should."""
    template = ChatTemplate(SYNTH_TEMPLATE, BOS, EOS)
    prompt = template.render(CONVERSATIONS["tool-round-trip"], tools=TOOLS)
    assert '"météo"' in prompt and '"Nom <de> la ville & \\"pays\\""' in prompt  # no \u escapes, no HTML escaping
    assert '\n  {\n    "type": "function",' in prompt  # tojson(indent=2)
    assert '{"name": "météo", "parameters": {"ville": "Zürich", "options": {"jours": [1, 2]}}}' in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>")
    off = template.render(CONVERSATIONS["single-turn"], enable_thinking=False, add_generation_prompt=False)
    assert off == "<|im_start|>user\nWhat is entropy?<|im_end|>\n"
    assert "<IMG_CONTEXT>\nWhat is this?" in template.render(CONVERSATIONS["pil-image-part"])


CHATML = """{{- bos_token -}}
{%- if tools %}
<|im_start|>system
Tools: {{ tools | tojson }}
Sorted: {{ tools[0] | tojson(indent=1, sort_keys=True) }}
Compact: {{ tools | tojson(separators=(",", ":")) }}<|im_end|>
{% endif %}
{%- set ns = namespace(users=0) %}
{%- for message in messages %}
    {%- if message.role not in ["system", "user", "assistant", "tool"] %}
        {{- raise_exception("Unknown role: " ~ message.role) }}
    {%- endif %}
    {%- if message.role == "user" %}{% set ns.users = ns.users + 1 %}{% endif %}
    <|im_start|>{{ message.role }}
    {% generation %}{{ message.content if message.content is string else message.content | tojson }}{% endgeneration %}
{%- if message.name is defined %} (name={{ message.name }}){% endif %}
{%- if message.reasoning_content is defined %} [r={{ message.reasoning_content }}|t={{ message.thinking }}]{% endif %}
<|im_end|>{% if not loop.last %}
{% endif %}
    {%- if message.role == "assistant" and message.content == "STOP" %}{% break %}{% endif %}
{%- endfor %}
{%- if documents %}{% for doc in documents %}
[doc {{ loop.index }}: {{ doc.title }}]{% endfor %}{% endif %}
{%- if add_generation_prompt %}
<|im_start|>assistant {{ ns.users }} {{ dict(a=1) | tojson }} {{ strftime_now("%Y") | length }}
{{- " " ~ (extra | tojson) if extra is defined else " -" }}
{% endif %}
{{- eos_token if end_with_eos is defined and end_with_eos else "" -}}"""


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Note:
    text: str
    weight: float


GENERIC_CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "plain": ([{"role": "system", "content": "sys", "name": None},
               {"role": "user", "content": "héllo <b>", "name": "u"},
               {"role": "tool", "content": "42", "name": None, "tool_call_id": None}], {}),
    "tools-docs-extra": ([{"role": "user", "content": "q"}], {
        "tools": TOOLS, "documents": [{"title": "Doc ü", "text": "t"}, {"title": "Two", "text": "u"}],
        "extra": {"k": [1, 2.5, None, True], "nested": {"é": "ß"}}, "end_with_eos": True}),
    "break-and-reasoning-alias": ([
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "STOP", "reasoning": "because"},
        {"role": "user", "content": "never rendered"}], {"add_generation_prompt": False}),
    "rich-values": ([{"role": "user", "content": [{"type": "text", "text": "x", "n": np.int64(3),
                                                   "flag": np.bool_(False), "c": Colour.RED.value}]},
                     {"role": "assistant", "content": "ok", "note": Note("n", 0.5)}],
                    {"extra": (np.float32(1.5), Note("m", 2.0), Image.new("L", (1, 1)))}),
}


@pytest.mark.parametrize("name", sorted(GENERIC_CASES))
def test_generic_chatml_template_matches_transformers(reference: Qwen2Tokenizer, name: str) -> None:
    messages, kwargs = GENERIC_CASES[name]
    ours, theirs = render_both(reference, CHATML, messages, **kwargs)
    assert ours == theirs


def test_template_that_raises(reference: Qwen2Tokenizer) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "?"}]
    with pytest.raises(jinja2.TemplateError, match="Unknown role: wizard"):
        reference.apply_chat_template(messages, chat_template=CHATML, tokenize=False)
    expected = r"rejected the conversation: Unknown role: wizard \(template line 11\)"
    with pytest.raises(ChatTemplateError, match=expected):
        ChatTemplate(CHATML, origin="model.gguf").render(messages)


@pytest.mark.parametrize(("source", "problem"), [
    ("{% if %}", "does not compile"),
    ("{% for m in messages %}{{ m.content }}", "does not compile"),
    ("{{ messages | nosuchfilter }}", "does not compile"),
])
def test_malformed_template_is_a_typed_error(source: str, problem: str) -> None:
    with pytest.raises(ChatTemplateError, match=problem) as info:
        ChatTemplate(source, origin="model.gguf")
    assert str(info.value).startswith("model.gguf: ")


@pytest.mark.parametrize(("source", "problem"), [
    ("{{ messages[0].content.missing.deeper }}", "UndefinedError"),
    ("{% set ns = namespace(_secret=1) %}", "SecurityError"),
    ("{{ messages[0].content + 1 }}", "TypeError"),
    ("{% set d = {} %}{{ d.update({'a': 1}) }}", "SecurityError"),  # immutable sandbox: no mutating methods
])
def test_render_failures_are_typed_errors(source: str, problem: str) -> None:
    with pytest.raises(ChatTemplateError, match=f"rendering failed: {problem}.*template line 1"):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("messages", "tools", "problem"), [
    ([], None, "conversation is empty"),
    (["hello"], None, "message 0 is a str"),
    ([{"role": "user", "content": "x"}], [len], r"tools\[0\] is a builtin_function_or_method"),
])
def test_bad_inputs_are_typed_errors(messages: list[Any], tools: Any, problem: str) -> None:
    with pytest.raises(ChatTemplateError, match=problem):
        ChatTemplate(SYNTH_TEMPLATE).render(messages, tools=tools)


def test_missing_special_tokens_are_undefined_as_in_transformers() -> None:
    source = "{{ bos_token is defined }} {{ eos_token is defined }}"
    assert ChatTemplate(source).render([{"role": "user", "content": "x"}]) == "False False"
    assert ChatTemplate(source, bos_token="<s>", eos_token="</s>").render([{"role": "user", "content": "x"}]) == \
        "True True"


def test_compiled_once_and_reused() -> None:
    template = ChatTemplate(SYNTH_TEMPLATE)
    compiled = template._compiled
    for _ in range(3):
        template.render(CONVERSATIONS["single-turn"])
    assert template._compiled is compiled


RELEASED = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "intern-s1" / "chat_template.jinja"
# The same conversation as callers write it (OpenAI's image_url, the Responses API's part types, null content) and as
# the released template reads it.
AS_SENT = [
    {"role": "user", "content": [{"type": "input_text", "text": "Compare"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                 {"type": "input_image", "image_url": "b.png"}, {"type": "video_url", "url": "v.mp4"}]},
    {"role": "assistant", "content": None, "reasoning_content": "Look first.", "tool_calls": [CALL]},
    {"role": "tool", "content": None},
]
AS_READ = [
    {"role": "user", "content": [{"type": "text", "text": "Compare"},
                                 {"type": "image", "url": "data:image/png;base64,AAAA"},
                                 {"type": "image", "url": "b.png"}, {"type": "video", "url": "v.mp4"}]},
    {"role": "assistant", "content": "", "reasoning_content": "Look first.", "tool_calls": [CALL]},
    {"role": "tool", "content": ""},
]


def test_callers_spellings_reach_the_released_template_as_its_own(reference: Qwen2Tokenizer) -> None:
    released = RELEASED.read_text()
    assert template_messages(AS_SENT) == AS_READ
    ours = ChatTemplate(released, BOS, EOS).render(template_messages(AS_SENT), tools=TOOLS)
    assert ours == reference.apply_chat_template(AS_READ, tools=TOOLS, chat_template=released, tokenize=False,
                                                 add_generation_prompt=True)
    assert ours.count("<IMG_CONTEXT>") == 2 and "<video>" in ours and "<think>\nLook first.\n</think>\n" in ours
    assert [p["url"] for p in media_parts(AS_READ) if p["type"] == "image"] == ["data:image/png;base64,AAAA", "b.png"]


@pytest.mark.parametrize("part", [{"type": "audio", "url": "a.wav"}, "text"])
def test_unknown_parts_are_typed_errors(part: Any) -> None:
    with pytest.raises(ChatTemplateError, match="message 0"):
        template_messages([{"role": "user", "content": [part]}])


@pytest.mark.parametrize(("meta", "expected"), [
    # the model cards (SPEC 1): Intern-S1-mini (qwen3) 0.8, Intern-S1 (qwen3moe) 0.7; top_p 1, top_k 50, min_p 0
    ({"general.architecture": "qwen3"}, {"temperature": 0.8, "top_k": 50, "top_p": 1.0, "min_p": 0.0}),
    ({"general.architecture": "qwen3moe"}, {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "min_p": 0.0}),
    ({"general.architecture": "qwen3moe", "general.sampling.temp": 0.6, "general.sampling.top_k": 20},
     {"temperature": 0.6, "top_k": 20, "top_p": 1.0, "min_p": 0.0}),
])
def test_sampling_defaults_fall_back_to_the_model_card(meta: dict[str, Any], expected: dict[str, float]) -> None:
    assert sampling_defaults(meta) == expected
