"""The engine core: multi-turn KV reuse gives exactly what a fresh context computes over the whole conversation,
evaluating only what the cache lacks (images included, each encoded once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interns1_local.errors import ImageError, UsageError
from interns1_local.runtime.backend import LoadOptions
from interns1_local.runtime.engine import Engine, Finished, Sampling, _StopMatcher

GREEDY = Sampling(temperature=0, max_tokens=10)


@pytest.fixture(scope="module")
def files(converted):
    return converted("f32", "f16")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    y, x = np.mgrid[0:448, 0:448]
    path = tmp_path_factory.mktemp("img") / "grad.png"
    Image.fromarray(np.stack([x * 255 // 447, y * 255 // 447, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return str(path)


def _run(conv, messages) -> tuple[str, Finished]:
    events = list(conv.generate(messages, thinking=False, sampling=GREEDY))
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
            fresh = fresh_engine.conversation()
            fresh_text, fresh_done = _run(fresh, messages)
            fresh_engine._free.append(fresh.seq_id)
            fresh.reset()
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
