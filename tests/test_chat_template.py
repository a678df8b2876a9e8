"""The chat template stored in the GGUF renders byte-identical prompts to the checkpoint's own template, both
rendered by transformers' ``apply_chat_template`` (the reference renderer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader
from transformers import Qwen2Tokenizer

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
