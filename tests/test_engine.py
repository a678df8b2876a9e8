"""The engine core: multi-turn KV reuse gives exactly what a fresh context computes over the whole conversation,
evaluating only what the cache lacks (images included, each encoded once)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from interns1_local.errors import ImageError, UsageError
from interns1_local.runtime.backend import Backend, LoadOptions
from interns1_local.runtime.engine import Engine, Finished, Sampling
from interns1_local.runtime.generation import _StopMatcher
from interns1_local.synth import write_image

GREEDY = Sampling(temperature=0, max_tokens=10)


@pytest.fixture(scope="module")
def files(converted):
    return converted("f32", "f16")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    return str(write_image(tmp_path_factory.mktemp("img") / "grad.png"))


def _run(conv, messages, tools=None) -> tuple[str, Finished]:
    events = list(conv.generate(messages, tools=tools, thinking=False, sampling=GREEDY))
    return "".join(getattr(e, "text", "") for e in events[:-1]), events[-1]


def test_multi_turn_reuse_equals_fresh_context(files, image) -> None:
    opts = LoadOptions(mmproj=files.mmproj.path, n_ctx=2048, type_k="f32", type_v="f32")
    cached_engine, fresh_engine = Engine(files.model.path, opts), Engine(files.model.path, opts)
    try:
        conv = cached_engine.conversation()
        messages = [{"role": "user", "content": [{"type": "image", "url": image},
                                                 {"type": "text", "text": "What is in this image?"}]}]
        previous = None
        for turn in range(3):
            text, done = _run(conv, messages)
            with fresh_engine.conversation() as fresh:
                fresh_text, fresh_done = _run(fresh, messages)
            assert done.tokens == fresh_done.tokens and text == fresh_text
            s = done.stats
            assert s.evaluated_tokens == s.prompt_tokens - s.cached_tokens
            if previous is None:
                assert s.cached_tokens == 0 and s.prompt_tokens > 256  # the image's 256 positions included
            else:  # everything of the previous turn (image, prompt) came from the cache
                assert s.cached_tokens >= previous.prompt_tokens
                assert s.evaluated_tokens < 40
            print(f"turn {turn + 1}: prompt {s.prompt_tokens}, cached {s.cached_tokens}, evaluated {s.evaluated_tokens}")
            previous = s
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"And turn {turn + 2}?"}]
        assert len(cached_engine.embeddings) == 1  # the image was encoded once
    finally:
        cached_engine.close()
        fresh_engine.close()


def test_editing_truncates_to_the_common_prefix(files) -> None:
    engine = Engine(files.model.path, LoadOptions(n_ctx=1024))
    try:
        conv = engine.conversation()
        first = _run(conv, [{"role": "user", "content": "Hello there, how are you today?"}])[1].stats
        edited = _run(conv, [{"role": "user", "content": "Hello there, how is it going?"}])[1].stats
        assert 0 < edited.cached_tokens < first.prompt_tokens
        assert edited.evaluated_tokens == edited.prompt_tokens - edited.cached_tokens
    finally:
        engine.close()


def test_context_overflow_is_a_clear_error(files, image) -> None:
    engine = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=256))
    try:
        with pytest.raises(UsageError, match="the context holds 256"):
            list(engine.conversation().generate(
                [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": "Hi"}]}]))
    finally:
        engine.close()


def test_images_need_a_projector(files, image) -> None:
    engine = Engine(files.model.path, LoadOptions(n_ctx=512))
    try:
        with pytest.raises(ImageError, match="without a vision projector"):
            list(engine.conversation().generate([{"role": "user", "content": [{"type": "image", "url": image}]}]))
    finally:
        engine.close()


def test_long_token_pieces_are_not_cut(files) -> None:
    """llama-cpp-python's own detokeniser drops pieces over 32 bytes; ours keeps them."""
    engine = Engine(files.model.path, LoadOptions(n_ctx=256))
    try:
        tokens = engine.backend.metadata["tokenizer.ggml.tokens"]
        longest = max(range(151643), key=lambda i: len(tokens[i]))
        piece = engine.backend.piece(longest)
        assert len(piece) > 32
        assert engine.backend.tokenize(piece.decode()) == [longest]
    finally:
        engine.close()


@pytest.mark.parametrize("chunks, stops, expected", [
    (["Hello wor", "ld STOP here"], ("STOP",), ("Hello world ", True)),
    (["a", "b", "c"], ("bd",), ("abc", False)),
    (["x<|", "end|>y"], ("<|end|>",), ("x", True)),
])
def test_stop_strings_across_chunks(chunks, stops, expected) -> None:
    matcher, out, hit = _StopMatcher(stops), "", False
    for c in chunks:
        text, hit = matcher.feed(c)
        out += text
        if hit:
            break
    if not hit:
        out += matcher.feed("", final=True)[0]
    assert (out, hit) == expected


def test_cli_run_json_and_stdin(files, image, tmp_path) -> None:
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "interns1_local", "run", str(files.model.path)]
    done = subprocess.run([*cli, "Describe the picture.", "--image", image, "--json", "--no-think",
                           "--temperature", "0", "--max-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["stats"]["generated_tokens"] <= 6 and out["stats"]["prompt_tokens"] > 256  # the image is in it
    assert out["reasoning"] == ""  # thinking off: nothing is parsed as reasoning
    piped = subprocess.run([*cli, "--no-think", "--temperature", "0", "--max-tokens", "6"], input="Hi there",
                           capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stdout.strip() != "" and "llama" not in piped.stderr  # logs silenced
    empty = subprocess.run(cli, input="  ", capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "empty prompt" in empty.stderr


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
# Random weights never choose a tool on their own: a grammar makes this model emit InternLM's tool-call format
# token by token (the tags as the tokens the model would produce), so the parser sees what a real model streams.
FORCE_CALL = (r'root ::= "<|action_start|><|plugin|>\n{\"name\": \"get_weather\", \"parameters\": '
              r'{\"city\": \"Paris\"}}<|action_end|>"')


def test_tool_round_trip_through_the_engine(files) -> None:
    from interns1_local.runtime.parsers import ToolCall

    engine = Engine(files.model.path, LoadOptions(n_ctx=2048))
    try:
        with engine.conversation() as conv:
            messages = [{"role": "user", "content": "What's the weather in Paris?"}]
            events = list(conv.generate(messages, tools=[WEATHER], thinking=False,
                                        sampling=Sampling(temperature=0, max_tokens=80, grammar=FORCE_CALL)))
            calls = [e for e in events if isinstance(e, ToolCall)]
            assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
            assert events[-1].stats.finish_reason == "stop"
            first = events[-1].stats
            messages += [{"role": "assistant", "content": "", "tool_calls": [
                            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                         {"role": "tool", "name": "get_weather", "content": '{"temp_c": 18, "sky": "clear"}'}]
            prompt = engine.template.render(messages, tools=[WEATHER], add_generation_prompt=True,
                                            enable_thinking=False)
            assert '{"temp_c": 18, "sky": "clear"}' in prompt  # the result goes back through the template
            text, done = _run(conv, messages, tools=[WEATHER])
            assert done.stats.cached_tokens >= first.prompt_tokens  # the tool call turn stayed in the cache
            assert done.stats.evaluated_tokens < 60
    finally:
        engine.close()


def test_bad_grammar_is_a_usage_error(files) -> None:
    engine = Engine(files.model.path, LoadOptions(n_ctx=256))
    try:
        with pytest.raises(UsageError, match="grammar"), engine.conversation() as conv:
            list(conv.generate([{"role": "user", "content": "Hi"}], thinking=False,
                               sampling=Sampling(grammar="root ::= (")))
        # the sequence was given back with its cache emptied (the prompt had been evaluated before the grammar failed)
        assert engine._free == [0]
        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(engine.backend.ctx), 0) == -1
    finally:
        engine.close()


def test_image_from_a_url_equals_the_same_file(files, image) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from interns1_local.runtime.images import ImageLimits

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(Path(image).parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{Path(image).name}"
    engine = Engine(files.model.path, LoadOptions(mmproj=files.mmproj.path, n_ctx=1024),
                    ImageLimits(allow_private_addresses=True))  # the test server is on loopback
    try:
        outputs = []
        for source in (image, url):
            with engine.conversation() as conv:
                outputs.append(_run(conv, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": source}},
                                                                        {"type": "text", "text": "Describe it."}]}]))
        assert outputs[0][1].tokens == outputs[1][1].tokens
        assert len(engine.embeddings) == 1  # same pixels, same id: the URL's image reused the file's embedding
        with pytest.raises(ImageError, match="404"), engine.conversation() as conv:
            _run(conv, [{"role": "user", "content": [{"type": "image", "url": url + ".missing"}]}])
    finally:
        engine.close()
        httpd.shutdown()


def test_offload_options_on_this_build(files, checkpoint, convert_once) -> None:
    """CPU-only here: auto plans 0 layers and says why; --cpu-moe's buffer override loads an MoE model and gives
    the same greedy tokens as without it; option errors are clear."""
    engine = Engine(files.model.path, LoadOptions(n_ctx=256, gpu_layers=None, flash_attn="on"))
    try:
        assert engine.backend.offload.n_gpu_layers == 0 and "CPU" in engine.backend.offload.describe()
    finally:
        engine.close()
    moe = convert_once(checkpoint("s1"), "q8_0", "f16").model.path
    outputs = []
    for cpu_moe in (False, True):
        engine = Engine(moe, LoadOptions(n_ctx=256, cpu_moe=cpu_moe))
        try:
            with engine.conversation() as conv:
                outputs.append(_run(conv, [{"role": "user", "content": "Hello"}])[1].tokens)
        finally:
            engine.close()
    assert outputs[0] == outputs[1] and len(outputs[0]) > 0
    for bad, match in [(LoadOptions(type_v="q8_0", flash_attn="off"), "flash attention"),
                       (LoadOptions(flash_attn="maybe"), "--flash-attn"), (LoadOptions(type_k="q5"), "--cache-type-k")]:
        with pytest.raises(UsageError, match=match):
            Engine(files.model.path, bad)


def test_penalties_change_greedy_output(files) -> None:
    engine = Engine(files.model.path, LoadOptions(n_ctx=512))
    try:
        outputs = []
        # random weights never repeat a token on their own; a grammar of four letters makes them repeat
        few = Sampling(temperature=0, max_tokens=24, grammar='root ::= [abcd]+')
        for penalty in (0.0, 2.0):
            with engine.conversation() as conv:
                events = list(conv.generate([{"role": "user", "content": "Letters:"}], thinking=False,
                                            sampling=replace(few, frequency_penalty=penalty)))
                outputs.append("".join(getattr(e, "text", "") for e in events))
        print(outputs)
        assert outputs[0] != outputs[1]
        assert max(map(outputs[1].count, "abcd")) < max(map(outputs[0].count, "abcd"))  # repeats are penalised
    finally:
        engine.close()


def test_model_card_sampling(files) -> None:
    """The released generation_config.json carries no sampling values: Intern-S1-mini's model card applies
    (temperature 0.8, top_p 1.0, top_k 50, min_p 0)."""
    engine = Engine(files.model.path, LoadOptions(n_ctx=256))
    try:
        assert engine.defaults == {"temperature": 0.8, "top_k": 50, "top_p": 1.0, "min_p": 0.0}
    finally:
        engine.close()


def _last_logits(path, n_batch: int, tokens: list[int]) -> np.ndarray:
    # flash attention off: on the CPU it alone moves the logits by ~1e-3 of their spread (measured), which would
    # hide what slicing does
    backend = Backend(path, LoadOptions(n_ctx=512, n_batch=n_batch, type_k="f32", type_v="f32", flash_attn="off"))
    try:
        backend.decode(tokens, 0, 0, want_logits=True)
        n_vocab = llama_cpp.llama_vocab_n_tokens(backend.vocab)
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(backend.ctx, -1), shape=(n_vocab,)).copy()
    finally:
        backend.close()


def test_prompt_longer_than_one_batch_slice(files, reference) -> None:
    """A prompt evaluated in 32-token slices (positions carried across slices, logits only for the last token) gives
    what one slice gives, and what transformers gives."""
    import torch

    from llama_helpers import rel_error

    tokens = [(i * 7919) % 150000 for i in range(1, 101)]  # 100 tokens: 4 slices of 32
    sliced, whole = _last_logits(files.model.path, 32, tokens), _last_logits(files.model.path, 512, tokens)
    with torch.no_grad():
        ref = reference(input_ids=torch.tensor([tokens])).logits[0, -1].numpy()
    assert rel_error(sliced, whole) < 1e-5
    assert rel_error(sliced, ref[: len(sliced)]) < 1e-4  # as test_text_parity: F32 weights and KV cache


def test_grammar_strings_refuse_control_characters(files) -> None:
    """RFC 8259: a JSON string holds no raw control character, so a forced call or a json_schema answer with one does
    not parse (forced Codex-shaped calls came back as text). llama.cpp's own grammar sampler says what may follow
    inside an open string: of a newline, a tab, \\x01, \\x7f and a letter, only the letter."""
    import ctypes

    import llama_cpp

    from interns1_local.runtime.grammar import json_grammar, tool_call_grammar

    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    cases = [(json_grammar(schema), '{"s": "a'),
             (tool_call_grammar([{"type": "function", "function": {"name": "f", "parameters": schema}}]),
              '<|action_start|><|plugin|>\n{"name": "f", "parameters": {"s": "a')]
    engine = Engine(files.model.path, LoadOptions(n_ctx=256))
    try:
        chars = ["\n", "\t", "\x01", "\x7f", "b"]
        ids = [engine.tokenize(c) for c in chars]
        assert all(len(i) == 1 for i in ids)
        for grammar, prefix in cases:
            smpl = llama_cpp.llama_sampler_init_grammar(engine.backend.vocab, grammar.encode(), b"root")
            for token in engine.tokenize(prefix):
                llama_cpp.llama_sampler_accept(smpl, token)
            arr = (llama_cpp.llama_token_data * len(ids))(*[llama_cpp.llama_token_data(i[0], 0.0, 0.0) for i in ids])
            data = llama_cpp.llama_token_data_array(arr, len(ids), -1, False)
            llama_cpp.llama_sampler_apply(smpl, ctypes.byref(data))
            llama_cpp.llama_sampler_free(smpl)
            assert [c for c, entry in zip(chars, arr) if entry.logit != float("-inf")] == ["b"], prefix
    finally:
        engine.close()
