"""What one reply needs while it is decoded: sampling settings, the per-token state (sampler, UTF-8 detokeniser,
stop strings, output parser, limits) and the statistics it ends with. The engine drives one; the server's scheduler
drives several in one batch."""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llama_cpp

from .parsers import THINK_CLOSE, Event, OutputParser
from .vision import ImageStat

if TYPE_CHECKING:
    from .engine import Conversation


@dataclass(frozen=True)
class Sampling:
    """None means the model's default (``sampling_defaults``: the GGUF's ``general.sampling.*``, else the model
    card's)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    max_tokens: int = 1024
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    penalty_last_n: int = 64
    grammar: str | None = None  # GBNF constraining the answer (with thinking on: what follows </think>)
    reasoning_budget: int | None = None  # with thinking on: at most this many tokens of reasoning, then </think>


# The model cards' recommended sampling (SPEC 1), keyed by the language model's GGUF architecture: qwen3 is
# Intern-S1-mini, qwen3moe Intern-S1. The released generation_config.json files carry no sampling values, so their
# GGUFs have no general.sampling.* keys and these apply.
MODEL_CARD_SAMPLING: dict[str, dict[str, float]] = {
    "qwen3": {"temperature": 0.8, "top_k": 50, "top_p": 1.0, "min_p": 0.0},
    "qwen3moe": {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "min_p": 0.0},
}
# GGUF key suffix (general.sampling.*) per Sampling field
_SAMPLING_KEYS = {"temperature": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p"}


def sampling_defaults(meta: dict[str, Any]) -> dict[str, float]:
    """What an unset Sampling field means for this GGUF: its ``general.sampling.*`` value where the converter wrote
    one (from generation_config.json), else the model card's (Intern-S1-mini's for an architecture not listed)."""
    card = MODEL_CARD_SAMPLING.get(str(meta.get("general.architecture")), MODEL_CARD_SAMPLING["qwen3"])
    found = {field: meta.get(f"general.sampling.{key}") for field, key in _SAMPLING_KEYS.items()}
    return {field: card[field] if value is None else float(value) for field, value in found.items()}


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int  # positions in the prompt (an image counts its embedding positions)
    cached_tokens: int  # of those, reused from the KV cache
    evaluated_tokens: int  # of those, evaluated this turn
    generated_tokens: int
    prompt_seconds: float
    generate_seconds: float
    finish_reason: str  # "stop", "length" (max_tokens), "context" (context full) or "cancelled"
    images: tuple[ImageStat, ...] = ()  # how each image of the prompt was tiled
    stop_sequence: str | None = None  # with "stop": the stop string that ended it (None: the end-of-turn token)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


@dataclass(frozen=True)
class Finished:
    stats: Stats
    tokens: tuple[int, ...]  # the generated tokens


class Generation:
    """One reply being decoded on one sequence: sampler, UTF-8 detokeniser, stop strings, output parser, limits.

    ``sample(i)`` draws a token from output row i of the last decode and returns its events; ``pending`` is then
    the token to decode next at ``pos`` (None once the reply is over), and ``decoded()`` records that it was.
    """

    def __init__(self, conv: Conversation, n_prompt: int, cached: int, evaluated: int, prompt_seconds: float,
                 sampler: Any, thinking: bool, sampling: Sampling, cancel: threading.Event | None) -> None:
        self.conv, self.sampler, self.sampling, self.cancel = conv, sampler, sampling, cancel
        self.n_prompt, self.cached, self.evaluated, self.prompt_seconds = n_prompt, cached, evaluated, prompt_seconds
        self.parser, self.decoder = OutputParser(thinking), codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = _StopMatcher(sampling.stop)
        self.pos, self.generated, self.pending, self.reason = n_prompt, [], None, None
        self.t_start = time.perf_counter()
        self.images: tuple[ImageStat, ...] = ()
        close = conv.engine.tokenize(THINK_CLOSE) if thinking and sampling.reasoning_budget is not None else []
        self.think_close = close[0] if len(close) == 1 else None  # the token a reasoning budget forces

    def _forced(self) -> int | None:
        """``</think>`` once the reasoning has used its budget (the sampler still sees it: a lazy grammar starts)."""
        if (self.think_close is None or len(self.generated) < (self.sampling.reasoning_budget or 0)
                or not self.parser.reasoning):
            return None
        llama_cpp.llama_sampler_accept(self.sampler, self.think_close)
        return self.think_close

    def sample(self, idx: int) -> list[Event]:
        be = self.conv.engine.backend
        if self.cancel is not None and self.cancel.is_set():
            self.reason = "cancelled"
            return []
        token = self._forced()
        if token is None:
            token = llama_cpp.llama_sampler_sample(self.sampler, be.ctx, idx)
        if be.is_eog(token):
            self.reason = "stop"
            return []
        self.generated.append(token)
        text, hit = self.stops.feed(self.decoder.decode(self.conv.engine.piece(token)))
        if hit:
            self.reason = "stop"
        elif len(self.generated) >= self.sampling.max_tokens:
            self.reason = "length"
        elif self.pos >= be.n_ctx:
            self.reason = "context"
        else:
            self.pending = token
        return self.parser.feed(text)

    def decoded(self) -> None:
        self.conv.cached.append(self.pending)
        self.pos, self.pending = self.pos + 1, None

    def finish(self) -> list[Event | Finished]:
        text, _ = self.stops.feed(self.decoder.decode(b"", final=True), final=True)
        events: list[Event | Finished] = [*self.parser.feed(text), *self.parser.finish()]
        stats = Stats(self.n_prompt, self.cached, self.evaluated, len(self.generated), self.prompt_seconds,
                      time.perf_counter() - self.t_start, self.reason or "cancelled", self.images,
                      self.stops.hit)
        return [*events, Finished(stats, tuple(self.generated))]

    def free(self) -> None:
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


class _StopMatcher:
    """Cuts the output at the first stop string, holding back only text that could begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit: str | None = None  # the stop string that ended the output

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, self.hit = min(hits)
            out, self.pending = self.pending[:at], ""
            return out, True
        keep = 0 if final else max((n for s in self.stops for n in range(1, len(s))
                                    if self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False
