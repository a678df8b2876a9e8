"""``interns1 chat``: a terminal chat on the engine. One conversation (one KV-cache sequence), slash commands, the
reasoning shown dimmed while it streams and folded to one line after, the answer rendered as Markdown as it arrives.

``ChatSession`` holds the state and runs commands (no terminal needed); ``repl`` reads lines and renders events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from .errors import ImageError, InternS1Error, UsageError
from .fsutil import atomic_outputs
from .runtime.engine import Conversation, Engine, Finished, Sampling, Stats
from .runtime.images import load_image
from .runtime.tiling import tile_count
from .runtime.parsers import ReasoningDelta, TextDelta, ToolCall

HELP = """\
/image PATH|URL   attach an image to your next message (repeatable)
/video PATH|URL   attach a video (--frames of it, sampled evenly) to your next message (repeatable)
/think on|off     Intern-S1's thinking mode
/thinking         show the last reasoning in full
/system TEXT      set the system prompt (empty: none)
/reset            start over (keeps the system prompt)
/undo             drop the last exchange
/save FILE        save the conversation as JSON
/load FILE        load a conversation saved with /save
/stats            tokens and timings of the last turn
/help             this list
/exit             leave (also Ctrl-D); Ctrl-C stops a generation
Start a message with \"\"\" to type several lines; end it with \"\"\"."""
SAVE_VERSION = 1
REASONING_TAIL = 6  # lines of the reasoning kept on screen while it streams


@dataclass
class Turn:
    """What the last generation produced."""

    reasoning: str = ""
    answer: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stats: Stats | None = None
    interrupted: bool = False


def _collect(turn: Turn, event: Any) -> None:
    if isinstance(event, ReasoningDelta):
        turn.reasoning += event.text
    elif isinstance(event, TextDelta):
        turn.answer += event.text
    elif isinstance(event, ToolCall):
        turn.tool_calls.append({"name": event.name, "arguments": event.arguments})
    elif isinstance(event, Finished):
        turn.stats = event.stats


class ChatSession:
    """The conversation state and the slash commands; ``send`` streams one turn's events."""

    def __init__(self, engine: Engine, system: str | None, think: bool, sampling: Sampling) -> None:
        self.engine, self.system, self.think, self.sampling = engine, system, think, sampling
        self.conversation: Conversation = engine.conversation()
        self.messages: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # image and video parts for the next message
        self.last = Turn()

    # -- turns ---------------------------------------------------------------------------------------------
    def _prompt_messages(self) -> list[dict[str, Any]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def send(self, text: str, on_event: Callable[[Any], None]) -> Turn:
        """Add the user's message (with pending images and videos) and stream the reply to ``on_event``. Ctrl-C
        stops the generation after the current token (the engine finishes cleanly) and keeps what was generated."""
        parts = self.pending
        self.messages.append({"role": "user", "content": parts + [{"type": "text", "text": text}] if parts else text})
        self.pending, turn, cancel = [], Turn(), threading.Event()
        events = self.conversation.generate(self._prompt_messages(), thinking=self.think, sampling=self.sampling,
                                            cancel=cancel)
        try:
            with _sigint_sets(cancel):
                for event in events:
                    _collect(turn, event)
                    on_event(event)
            turn.interrupted = cancel.is_set()
        except BaseException:  # an error (or Ctrl-C before streaming began): the turn never happened
            self.messages.pop()
            raise
        finally:
            events.close()
        reply: dict[str, Any] = {"role": "assistant", "content": turn.answer}
        if turn.tool_calls:
            reply["tool_calls"] = [{"type": "function", "function": c} for c in turn.tool_calls]
        self.messages.append(reply)
        self.last = turn
        return turn

    # -- commands ------------------------------------------------------------------------------------------
    def command(self, line: str) -> str | None:
        """Run a slash command; returns what to print, or None for /exit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        handler = {"image": self._image, "video": self._video, "think": self._think, "thinking": self._thinking,
                   "system": self._system, "reset": self._reset, "undo": self._undo, "save": self._save,
                   "load": self._load, "stats": self._stats, "help": lambda _: HELP}.get(name.lower())
        if name.lower() in ("exit", "quit", "bye"):
            return None
        if handler is None:
            raise UsageError(f"unknown command /{name}; /help lists them")
        return handler(arg)

    def _media_source(self, arg: str, kind: str) -> str:
        if not arg:
            raise UsageError(f"usage: /{kind} PATH|URL")
        if self.engine.backend.mtmd is None:
            raise ImageError(f"this model was loaded without a vision projector (mmproj): pass --mmproj to read "
                             f"{kind}s")
        return os.path.expanduser(arg)

    def _image(self, arg: str) -> str:
        source = self._media_source(arg, "image")
        img = load_image(source, self.engine.limits)  # fail now, not when the message is sent
        self.pending.append({"type": "image", "url": source})
        tiles = tile_count(img.image.width, img.image.height, self.engine.vision.limits)
        return (f"image {img.image.width}x{img.image.height} attached to your next message as {tiles} tile"
                f"{'s' * (tiles > 1)} ({len(self.pending)} pending)")

    def _video(self, arg: str) -> str:
        source = self._media_source(arg, "video")
        limits = self.engine.video_limits
        # fail now, not when sent; decoded once: the engine keeps it for this and later turns
        video = self.engine.videos.load(source, limits.frames, limits, self.engine.limits)
        self.pending.append({"type": "video", "url": source})
        return (f"video {video.width}x{video.height}, {video.total_frames} frames at {video.fps:g} fps, attached to "
                f"your next message as {len(video.frames)} frames of one tile ({len(self.pending)} pending)")

    def _think(self, arg: str) -> str:
        if arg.lower() not in ("on", "off"):
            raise UsageError("usage: /think on|off")
        self.think = arg.lower() == "on"
        return f"thinking {'on' if self.think else 'off'}"

    def _thinking(self, _: str) -> str:
        return self.last.reasoning or "(no reasoning in the last turn)"

    def _system(self, arg: str) -> str:
        self.system = arg or None
        return f"system prompt {'set' if arg else 'cleared'}"

    def _reset(self, _: str) -> str:
        self.messages, self.pending, self.last = [], [], Turn()
        self.conversation.reset()
        return "conversation cleared"

    def _undo(self, _: str) -> str:
        last_user = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None)
        if last_user is None:
            return "nothing to undo"
        del self.messages[last_user:]  # the cache keeps its prefix; the next turn truncates to what still matches
        return "last exchange removed"

    def _save(self, arg: str) -> str:
        if not arg:
            raise UsageError("usage: /save FILE")
        path = Path(arg).expanduser()
        data = {"version": SAVE_VERSION, "system": self.system, "think": self.think, "messages": self.messages}
        try:
            with atomic_outputs([path]) as (tmp,):
                tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot save: {exc.strerror}", path) from None
        return f"saved {len(self.messages)} messages to {path}"

    def _load(self, arg: str) -> str:
        if not arg:
            raise UsageError("usage: /load FILE")
        path = Path(arg).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read a saved conversation: {exc}", path) from None
        messages = data.get("messages") if isinstance(data, dict) else None
        if (not isinstance(data, dict) or data.get("version") != SAVE_VERSION or not isinstance(messages, list)
                or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant", "tool") for m in messages)):
            raise UsageError("not a conversation saved by /save (version 1)", path)
        self.messages, self.system, self.think = messages, data.get("system"), bool(data.get("think", self.think))
        return f"loaded {len(messages)} messages (thinking {'on' if self.think else 'off'})"

    def _stats(self, _: str) -> str:
        s = self.last.stats
        if s is None:
            return "no turn yet"
        return "\n".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in
                         (asdict(s) | {"tokens_per_second": s.tokens_per_second}).items())


@contextlib.contextmanager
def _sigint_sets(flag: threading.Event) -> Iterator[None]:
    """While streaming, Ctrl-C sets ``flag`` instead of raising, so the engine stops between tokens."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _View:
    """What is on screen while a turn streams: the tail of the reasoning (dim), then the answer as Markdown."""

    def __init__(self) -> None:
        self.reasoning, self.answer, self.calls = "", "", []

    def on_event(self, event: Any) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, TextDelta):
            self.answer += event.text
        elif isinstance(event, ToolCall):
            self.calls.append(f"tool call: {event.name}({json.dumps(event.arguments, ensure_ascii=False)})")

    def live(self) -> Group:
        tail = "\n".join(self.reasoning.strip("\n").splitlines()[-REASONING_TAIL:])
        parts = [Text(tail, style="dim italic")] if tail and not self.answer else []
        return Group(*parts, Markdown(self.answer), *(Text(c, style="cyan") for c in self.calls))


def _summary(turn: Turn, seconds: float) -> Text:
    s = turn.stats
    line = f"{s.generated_tokens} tokens, {s.tokens_per_second:.1f} tok/s, prompt {s.evaluated_tokens} evaluated / " \
           f"{s.cached_tokens} cached" if s else ""
    if turn.reasoning:
        line = f"▸ thought for {seconds:.1f} s (/thinking shows it) · " + line
    if turn.interrupted:
        line = "[stopped] " + line
    return Text(line, style="dim")


def _read_message(console: Console) -> str:
    line = console.input("[bold green]>>> [/]")
    if not line.startswith('"""'):
        return line
    lines = [line[3:]]
    while not lines[-1].endswith('"""'):
        lines.append(console.input("[dim]... [/]"))
    return "\n".join(lines)[: -3]


def _history(path: Path) -> None:
    """Line editing and a persistent history, where the platform has readline."""
    try:
        import readline
    except ImportError:
        return
    import atexit

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        readline.read_history_file(path)
    readline.set_history_length(1000)
    atexit.register(readline.write_history_file, path)


def repl(session: ChatSession, console: Console) -> None:
    """Read messages and commands until /exit or Ctrl-D."""
    _history(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "interns1" / "history")
    console.print("[dim]/help lists the commands; Ctrl-C stops a generation, Ctrl-D leaves.[/]")
    while True:
        try:
            line = _read_message(console)
        except EOFError:
            console.print()
            return
        except KeyboardInterrupt:
            console.print("\n[dim](Ctrl-D or /exit to leave)[/]", highlight=False)
            continue
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                reply = session.command(line)
                if reply is None:
                    return
                console.print(reply, style="dim", highlight=False, markup=False)
                continue
            view, started = _View(), time.perf_counter()
            with Live(view.live(), console=console, refresh_per_second=8, transient=True) as live:
                turn = session.send(line, lambda e: (view.on_event(e), live.update(view.live())))
            console.print(Group(Markdown(turn.answer), *(Text(c, style="cyan") for c in view.calls)))
            console.print(_summary(turn, time.perf_counter() - started))
        except InternS1Error as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
        except KeyboardInterrupt:  # between reading the line and the start of streaming
            console.print("[dim][stopped][/]")


def start(engine: Engine, system: str | None, think: bool, sampling: Sampling, commands: list[str],
          console: Console) -> None:
    """Run ``commands`` (the /image and /video of the command line), then the conversation."""
    session = ChatSession(engine, system, think, replace(sampling))
    for command in commands:
        console.print(session.command(command), style="dim", markup=False)
    repl(session, console)
