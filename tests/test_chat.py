"""``interns1 chat``: the REPL driven in a pseudo-terminal against a real converted model, and its commands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pexpect
import pytest

from interns1_local.chat import ChatSession
from interns1_local.errors import ImageError, UsageError
from interns1_local.runtime.backend import LoadOptions
from interns1_local.runtime.engine import Engine, Sampling
from interns1_local.synth import write_image

PROMPT = ">>> "


@pytest.fixture(scope="module")
def files(converted):
    return converted("f16", "f16")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("chat-img") / "grad.png")


def _spawn(files, tmp_path: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "interns1_local", "chat", str(files.model.path.parent), "--ctx-size",
                                           "2048", "--temperature", "0", *args],
                          env={"XDG_STATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TERM": "xterm",
                               "HOME": str(tmp_path)},
                          encoding="utf-8", codec_errors="replace", timeout=120, dimensions=(40, 120))
    child.expect(PROMPT)
    return child


def _stat(child: pexpect.spawn, name: str) -> int:
    child.sendline("/stats")
    child.expect(rf"{name}: (\d+)")
    value = int(child.match.group(1))
    child.expect(PROMPT)
    return value


def _leave_with_ctrl_d(child: pexpect.spawn) -> None:
    """Ctrl-D at the prompt ends the chat. The prompt is printed just before readline puts the terminal in raw mode; a
    Ctrl-D that arrives in between is taken by the terminal's cooked mode and lost, so it is sent again until it lands."""
    for _ in range(10):
        child.sendeof()
        if child.expect([pexpect.EOF, pexpect.TIMEOUT], timeout=3) == 0:
            return
    raise AssertionError(f"the chat did not end on Ctrl-D; its last output: {child.before[-300:]!r}")


def test_repl_image_think_reset_in_a_terminal(files, image, tmp_path) -> None:
    child = _spawn(files, tmp_path, "--max-tokens", "12")
    try:
        child.sendline(f"/image {image}")
        child.expect("image 448x448 attached")
        child.expect(PROMPT)
        child.sendline("What is in the picture?")
        child.expect(r"▸ thought for .* 12 tokens")  # thinking on: the reasoning is folded to one line after
        child.expect(PROMPT)
        assert _stat(child, "prompt_tokens") > 256  # the image's positions are in the prompt
        child.sendline("/think off")
        child.expect("thinking off")
        child.expect(PROMPT)
        for _ in range(2):  # with thinking off the template drops its default system prompt; then turns reuse
            child.sendline("Tell me more.")
            child.expect("tok/s")
            child.expect(PROMPT)
        assert _stat(child, "cached_tokens") > 256  # the image and the earlier turns came from the KV cache
        child.sendline("/reset")
        child.expect("conversation cleared")
        child.expect(PROMPT)
        child.sendline("Hello")
        child.expect("tok/s")
        child.expect(PROMPT)
        assert _stat(child, "prompt_tokens") < 40
        child.sendline("/nonsense")
        child.expect("unknown command /nonsense")
        child.expect(PROMPT)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
        assert child.wait() == 0
    finally:
        child.close(force=True)
    history = (tmp_path / "interns1" / "history").read_text().splitlines()
    assert history[:4] == [f"/image {image}", "What is in the picture?", "/stats", "/think off"]  # readline's file


def test_ctrl_c_stops_a_generation_not_the_chat(files, tmp_path) -> None:
    child = _spawn(files, tmp_path, "--max-tokens", "100000", "--no-think")
    try:
        child.sendline("Write a very long story.")
        time.sleep(3)  # streaming by now (~40 tok/s here)
        child.sendintr()
        child.expect(r"\[stopped\]")
        child.expect(PROMPT)
        stopped = _stat(child, "generated_tokens")
        assert 0 < stopped < 100000
        first_prompt = _stat(child, "prompt_tokens")
        child.sendline("And now?")  # the chat goes on from what was kept
        time.sleep(1)
        child.sendintr()
        # this reply follows a first one whose length depends on timing, so random weights may end it before the Ctrl-C,
        # which then lands at the prompt; either way the turn is kept
        child.expect([r"\[stopped\]", "Ctrl-D or /exit"])
        child.expect(PROMPT)
        # the first prompt and the kept answer's start come from the cache (random weights write token sequences the
        # tokenizer would split differently, so the answer's re-tokenised text matches only up to the first such place)
        assert _stat(child, "cached_tokens") > first_prompt
        child.sendintr()  # at the prompt Ctrl-C only says how to leave
        child.expect("Ctrl-D or /exit")
        child.expect(PROMPT)
        _leave_with_ctrl_d(child)
        assert child.wait() == 0
    finally:
        child.close(force=True)


@pytest.fixture(scope="module")
def session(files):
    engine = Engine(files.model.path, LoadOptions(n_ctx=1024))
    yield ChatSession(engine, None, False, Sampling(temperature=0, max_tokens=4))
    engine.close()


def test_save_load_undo(session, tmp_path) -> None:
    session.command("/reset")
    for text in ("One", "Two"):
        session.send(text, lambda _: None)
    assert session.command(f"/save {tmp_path / 'c.json'}") == f"saved 4 messages to {tmp_path / 'c.json'}"
    saved = json.loads((tmp_path / "c.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert not list(tmp_path.glob(".*partial"))
    session.command("/undo")
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["One"]
    reply = session.send("Two", lambda _: None)
    assert reply.stats.cached_tokens >= reply.stats.prompt_tokens - 6  # only the re-sent message is evaluated
    session.command("/reset")
    assert session.command(f"/load {tmp_path / 'c.json'}").startswith("loaded 4 messages")
    assert session.messages == saved["messages"]


@pytest.mark.parametrize("line, error, match", [
    ("/think maybe", UsageError, "usage: /think on|off"),
    ("/image", UsageError, "usage: /image"),
    ("/load /nonexistent/c.json", UsageError, "cannot read a saved conversation"),
    ("/save /nonexistent/dir/c.json", UsageError, "cannot save"),
    ("/image /tmp", ImageError, "projector"),
])
def test_command_errors(session, line, error, match) -> None:
    with pytest.raises(error, match=match):
        session.command(line)


def test_load_refuses_other_json(session, tmp_path) -> None:
    (tmp_path / "x.json").write_text('{"messages": [{"role": "root"}], "version": 1}')
    with pytest.raises(UsageError, match="not a conversation saved by /save"):
        session.command(f"/load {tmp_path / 'x.json'}")


@pytest.mark.parametrize("text", ['[{"role": "user", "content": "hi"}]', '"a string"', "3"])
def test_load_refuses_json_that_is_no_object(session, tmp_path, text) -> None:
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(UsageError, match="not a conversation saved by /save"):
        session.command(f"/load {tmp_path / 'x.json'}")
