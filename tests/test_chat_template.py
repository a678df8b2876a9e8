"""The chat template stored in the GGUF renders byte-identical prompts to the checkpoint's own template, and the
synthetic checkpoints' own template renders what the released Intern-S1 template renders, all rendered by
transformers' ``apply_chat_template`` (the reference renderer)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from gguf import GGUFReader
from template_corpus import CORPUS
from transformers import Qwen2Tokenizer

import interns1_local
from interns1_local.runtime.template import ChatTemplate

SYNTH_TEMPLATE = (Path(interns1_local.__file__).parent / "synth" / "chat_template.jinja").read_text()
# The released files sit beside the repository (../shared), in CI as here.
RELEASED = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "intern-s1" / "chat_template.jinja"

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather at a place.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "What is entropy?"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "multi-turn": [
        {"role": "user", "content": "Name a noble gas."},
        {"role": "assistant", "content": "<think>\nHelium is one.\n</think>\n\nHelium."},
        {"role": "user", "content": "Another?"},
    ],
    "image": [{"role": "user", "content": [
        {"type": "image", "url": "cat.png"}, {"type": "text", "text": "Describe this image."}]}],
    "two-images": [{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, {"type": "image_url", "image_url": {"url": "a.png"}},
        {"type": "text", "text": " and "}, {"type": "image", "url": "b.png"}]}],
    "tool-round-trip": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "I will look it up.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "name": "get_weather", "content": "{\"temp_c\": 18}"},
    ],
}


@pytest.fixture(scope="module")
def renderer(mini_ckpt: Path) -> Qwen2Tokenizer:
    # The template renderer does not depend on the vocabulary; a tokenizer object is what carries it.
    return Qwen2Tokenizer(vocab={"a": 0}, merges=[])


@pytest.fixture(scope="module")
def stored_template(converted) -> str:
    """Read once: parsing a GGUF's 153k-token arrays takes seconds."""
    return GGUFReader(converted("q8_0", "f16").model.path).fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("thinking", [None, True, False], ids=["default", "think-on", "think-off"])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_gguf_template_renders_like_the_checkpoints(stored_template, mini_ckpt, renderer, name, tools, thinking) -> None:
    original = (mini_ckpt / "chat_template.jinja").read_text()
    assert isinstance(stored_template, str) and stored_template
    kwargs = {} if thinking is None else {"enable_thinking": thinking}

    def render(template: str) -> str:
        return renderer.apply_chat_template(CONVERSATIONS[name], tools=tools, chat_template=template, tokenize=False,
                                            add_generation_prompt=True, **kwargs)

    assert render(stored_template) == render(original)


def test_template_behaves_like_intern_s1(renderer, mini_ckpt) -> None:
    """Thinking on by default: default system prompt and a <think> prefill; off: neither."""
    template = (mini_ckpt / "chat_template.jinja").read_text()
    msgs = CONVERSATIONS["single-turn"]
    on = renderer.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True)
    off = renderer.apply_chat_template(msgs, chat_template=template, tokenize=False, add_generation_prompt=True,
                                       enable_thinking=False)
    assert on.startswith("<|im_start|>system\nYou are an expert reasoner") and on.endswith("<|im_start|>assistant\n<think>")
    assert off == "<|im_start|>user\nWhat is entropy?<|im_end|>\n<|im_start|>assistant\n"
    tool = renderer.apply_chat_template(CONVERSATIONS["tool-round-trip"], tools=TOOLS, chat_template=template,
                                        tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n<|action_end|>' in tool
    assert "<|im_start|>environment name=<|plugin|>\n{\"temp_c\": 18}<|im_end|>" in tool


def _renders(renderer: Qwen2Tokenizer, template: str, name: str) -> list[str]:
    """One conversation with thinking default/on/off, with and without the generation prompt."""
    messages, tools = CORPUS[name]
    return [renderer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation,
                                         **({} if thinking is None else {"enable_thinking": thinking}))
            for thinking, generation in itertools.product([None, True, False], [True, False])]


@pytest.fixture(scope="module")
def released() -> str:
    return RELEASED.read_text()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_synthetic_template_renders_as_the_released_one(renderer, released, name) -> None:
    assert _renders(renderer, SYNTH_TEMPLATE, name) == _renders(renderer, released, name)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_runtime_renders_the_released_template_as_transformers(renderer, released, name) -> None:
    messages, tools = CORPUS[name]
    template = ChatTemplate(released)
    ours = [template.render(messages, tools=tools, add_generation_prompt=generation,
                            **({} if thinking is None else {"enable_thinking": thinking}))
            for thinking, generation in itertools.product([None, True, False], [True, False])]
    assert ours == _renders(renderer, released, name)


def test_the_corpus_reaches_what_the_released_template_does(renderer, released) -> None:
    """The comparisons above are worth something only if the corpus is large and its renders hold these."""
    assert len(CORPUS) >= 40 and SYNTH_TEMPLATE != released
    text = "".join(r for name in CORPUS for r in _renders(renderer, released, name))
    for needle in ["<|im_start|>system name=<|plugin|>\n", "# External Tools\nYou have access to these tools:\n[\n  {",
                   "<|im_start|>environment name=<|plugin|>\n18<|im_end|>", "<|im_start|>developer\nD<|im_end|>",
                   "<|im_start|>assistant\n<think>\nThen Lyon.\n</think>\nNow Lyon.<|action_start|><|plugin|>\n",
                   "<think>\n\n</think>\n<|action_start|>", "Look:\n<IMG_CONTEXT><|im_end|>", "<video>\nWhat happens?",
                   '{"name": "get_weather", "parameters": {"city": "Paris"}}\n<|action_end|>\n<|action_start|>',
                   "<|im_start|>assistant\nHelium.<|im_end|>", "<|im_start|>assistant\n<think>"]:
        assert needle in text, needle
