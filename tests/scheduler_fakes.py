"""A stand-in for the engine the server's scheduler drives, for tests/test_scheduler.py.

The real llama.cpp cannot be made to fail on demand (a decode that raises, a sampler that breaks, a client that leaves
between two reads of its cancel flag), so the scheduler's tests run the real ``Scheduler`` against this fake. It has the
engine's interface as the scheduler uses it (prepare, conversations, start_prompt, decode_step, the generation's
sample/decoded/finish/free) and a KV cache of ``n_ctx`` cells shared by all sequences. At numbered points it raises
what the plan says, or sets a job's cancel flag, as a client leaving at that moment would. Whatever it sees go wrong
(two replies on one sequence, a decode of a sequence no reply holds, a sampler freed twice, the context used after it
was freed) is recorded in ``violations``: raising would only be caught by the scheduler's own error handling.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interns1_local.errors import ContextFullError, ImageError, UsageError
from interns1_local.runtime.engine import Prompt
from interns1_local.runtime.generation import Finished, Stats
from interns1_local.runtime.guard import ContextGuard
from interns1_local.runtime.parsers import TextDelta
from interns1_local.server.metrics import Metrics

FAULTS = {
    "error": lambda where: ImageError(f"injected failure at {where}"),  # a typed error: the request's 4xx/5xx
    "full": lambda where: ContextFullError(f"injected: no room at {where}"),  # llama_decode's 1
    "bug": lambda where: RuntimeError(f"injected bug at {where}"),  # anything else: must cost one request only
}


@dataclass
class Plan:
    """What happens at the n-th call the scheduler makes into the fake: a fault raised, an open job's client leaving.
    Set by call number (``faults``, ``cancels``), or at random at every call (``seed`` and the two rates)."""

    faults: dict[int, str] = field(default_factory=dict)
    cancels: dict[int, int] = field(default_factory=dict)  # call -> index into the open jobs (modulo their number)
    seed: int | None = None  # with it: the random points (reproducible from the seed)
    fault_rate: float = 0.0
    cancel_rate: float = 0.0
    open_jobs: Callable[[], list[Any]] = list
    calls: int = 0

    def __post_init__(self) -> None:
        self.rnd = random.Random(self.seed) if self.seed is not None else None

    def point(self, where: str, can_fail: bool = True) -> None:
        self.calls += 1
        rnd, n = self.rnd, self.calls
        if n in self.cancels or (rnd is not None and rnd.random() < self.cancel_rate):
            jobs = self.open_jobs()
            if jobs:
                jobs[self.cancels.get(n, rnd.randrange(len(jobs)) if rnd else 0) % len(jobs)].cancel.set()
        kind = self.faults.get(n)
        if kind is None and rnd is not None and rnd.random() < self.fault_rate:
            kind = rnd.choice(sorted(FAULTS))
        if kind is not None and can_fail:
            raise FAULTS[kind](where)

    def quiet(self) -> None:
        self.faults, self.cancels, self.rnd = {}, {}, None


class FakeLoop:
    """The event loop a request waits on: delivered items are collected, and a client may leave right then."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def call_soon_threadsafe(self, callback: Any, item: Any) -> None:
        self.plan.point("deliver", can_fail=False)
        callback(item)


class FakeEngine:
    def __init__(self, plan: Plan, n_ctx: int) -> None:
        self.plan, self.n_ctx = plan, n_ctx
        self.guard = ContextGuard()
        self.backend = FakeBackend(self)
        self.convs: list[FakeConv] = []
        self.samplers: dict[int, bool] = {}  # sampler id -> freed
        self.violations: list[str] = []

    def conversation(self) -> FakeConv:
        conv = FakeConv(self, len(self.convs))
        self.convs.append(conv)
        return conv

    def prepare(self, messages: list[dict[str, Any]], tools: Any, thinking: bool, media: Any) -> Prompt:
        self.plan.point("prepare")
        return Prompt(list(messages[-1]["content"]), None, thinking, 0.0)

    def prepare_text(self, text: str) -> Prompt:
        self.plan.point("prepare_text")
        return Prompt([int(t) for t in text.split()], None, False, 0.0)

    def cells(self) -> int:
        return sum(len(c.cached) for c in self.convs)

    def close(self, wait_s: float = 60.0) -> None:  # replaced by Engine.close in the shutdown tests
        self.backend.close()


class FakeBackend:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.closed, self.rows = engine, False, {}
        self.n_ctx = engine.n_ctx
        self.in_decode = threading.Event()
        self.hold: threading.Event | None = None  # set by a test: decode_step waits for it (a long llama_decode)

    def decode_step(self, batch: list[tuple[int, int, int]]) -> None:
        eng = self.engine
        eng.plan.point("decode_step")
        seqs = [seq for _, seq, _ in batch]
        if len(set(seqs)) != len(seqs):
            eng.violations.append(f"one batch decodes a sequence twice: {seqs}")
        for token, seq, pos in batch:
            gen = eng.convs[seq].gen
            if gen is None or gen.freed or gen.pending != token or gen.pos != pos:
                eng.violations.append(f"decode of sequence {seq}, which no running reply holds at {pos}")
        if eng.cells() + len(batch) > self.n_ctx:
            raise ContextFullError("no room for a decode step")
        self._run_decode()
        self.rows = {seq: i for i, seq in enumerate(seqs)}

    def _run_decode(self) -> None:
        self.in_decode.set()
        if self.hold is not None:
            self.hold.wait(timeout=30)
        if self.closed:
            self.engine.violations.append("the context was freed while llama_decode ran")
        self.in_decode.clear()

    def close(self) -> None:
        self.closed = True


class FakeConv:
    def __init__(self, engine: FakeEngine, seq_id: int) -> None:
        self.engine, self.seq_id = engine, seq_id
        self.cached: list[int] = []
        self.gen: FakeGen | None = None

    def shared_prefix(self, units: list[int]) -> int:
        k = 0
        while k < min(len(self.cached), len(units)) and self.cached[k] == units[k]:
            k += 1
        return min(k, len(units) - 1)

    def adopt_prefix(self, source: FakeConv, k: int) -> None:
        self.engine.plan.point("adopt_prefix")
        self.cached = list(source.cached[:k])

    def reset(self) -> None:
        self.cached = []

    def start_prompt(self, prompt: Prompt, sampling: Any, cancel: threading.Event) -> FakeGen:
        eng = self.engine
        if self.gen is not None and not self.gen.freed:
            eng.violations.append(f"sequence {self.seq_id} started for a second reply while another holds it")
        if eng.backend.closed:
            eng.violations.append("a prompt evaluated after the context was freed")
        units = prompt.units
        if len(units) >= eng.n_ctx:
            raise UsageError("the conversation is longer than the context")
        k = self.shared_prefix(units)
        self.cached = self.cached[:k]
        eng.plan.point("prefill")
        if eng.cells() + len(units) - k > eng.n_ctx:
            raise ContextFullError("no room for the prompt")
        self.cached = list(units)
        eng.backend.rows = {self.seq_id: -1}
        self.gen = FakeGen(self, len(units), k, sampling.max_tokens, cancel)
        return self.gen


class FakeGen:
    def __init__(self, conv: FakeConv, n_prompt: int, cached: int, max_tokens: int, cancel: threading.Event) -> None:
        self.conv, self.n_prompt, self.cached, self.max_tokens, self.cancel = conv, n_prompt, cached, max_tokens, cancel
        self.pos, self.pending, self.generated, self.reason, self.freed = n_prompt, None, 0, None, False
        engine = conv.engine
        self.sampler = len(engine.samplers)
        engine.samplers[self.sampler] = False

    def sample(self, idx: int) -> list[Any]:
        eng = self.conv.engine
        eng.plan.point("sample")
        if self.freed:
            eng.violations.append(f"a freed sampler sampled (sequence {self.conv.seq_id})")
        if self.cancel.is_set():
            self.reason = "cancelled"
            return []
        if eng.backend.rows.get(self.conv.seq_id) != idx:
            eng.violations.append(f"sequence {self.conv.seq_id} sampled row {idx} of another sequence")
        self.generated += 1
        if self.generated >= self.max_tokens:
            self.reason = "length"
        elif self.pos >= eng.n_ctx:
            self.reason = "context"
        else:
            self.pending = 7
        return [TextDelta("x")]

    def decoded(self) -> None:
        self.conv.cached.append(self.pending)
        self.pos, self.pending = self.pos + 1, None

    def finish(self) -> list[Any]:
        self.conv.engine.plan.point("finish")
        return [Finished(Stats(self.n_prompt, self.cached, self.n_prompt - self.cached, self.generated, 0.0, 0.0,
                               self.reason or "cancelled"), ())]

    def free(self) -> None:
        eng = self.conv.engine
        if eng.samplers[self.sampler]:
            eng.violations.append(f"sampler {self.sampler} freed twice")
        eng.samplers[self.sampler] = self.freed = True


class FaultyMetrics(Metrics):
    """The server's real counters, with the plan's points in the calls the scheduler makes after a prompt ran."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan

    def prompt(self, n_prompt: int, cached: int) -> None:
        self.plan.point("metrics.prompt")
        super().prompt(n_prompt, cached)

    def first_token(self, seconds: float) -> None:
        self.plan.point("metrics.first_token")
        super().first_token(seconds)

    def finished(self, stats: Stats, seconds: float) -> None:
        self.plan.point("metrics.finished")
        super().finished(stats, seconds)
