"""Continuous batching: one thread owns the llama.cpp context and decodes every active reply in one batch per step.

Requests join between steps (their prompt evaluated on the sequence whose cache shares the longest prefix with it,
or with that prefix copied from a busy sequence) and leave as soon as they finish or are cancelled. Events go back to
each request's asyncio queue through its event loop. The queue of waiting requests is bounded. A finished reply's
sequence keeps its cache for the next request with the same prefix; when the shared KV cache has no room for a prompt
or a step, those idle caches are dropped and the evaluation tried once more.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from interns1_local.errors import ContextFullError, InternS1Error

from ..runtime.engine import Conversation, Engine, Prompt
from ..runtime.generation import Finished, Generation, Sampling, Stats
from ..runtime.images import LoadedImage
from .metrics import Metrics

T = TypeVar("T")


class QueueFull(Exception):
    """Every sequence is busy and the waiting queue is full."""


class InternalError(InternS1Error):
    """A bug met while serving a request (the HTTP layer answers 500)."""


@dataclass
class Job:
    """One request: a chat (messages, tools, images already loaded) or a raw text prompt."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    thinking: bool
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    images: list[LoadedImage] = field(default_factory=list)
    raw_prompt: str | None = None
    timeout_s: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None

    def deliver(self, item: Any) -> None:
        """From the scheduler thread: an event, ``Finished``, or an exception for the request to raise."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


@dataclass
class _Active:
    job: Job
    conv: Conversation
    gen: Generation


class Scheduler:
    def __init__(self, engine: Engine, parallel: int, max_queue: int, metrics: Metrics) -> None:
        self.engine, self.metrics, self.max_queue = engine, metrics, max_queue
        self.idle: list[Conversation] = [engine.conversation() for _ in range(parallel)]
        self.active: list[_Active] = []
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="interns1-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.metrics.set_queue(len(self.waiting), len(self.active))
            self.wake.notify()

    # -- the scheduler thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopping and not self.active and not (self.waiting and self.idle):
                    self.wake.wait()
                if self.stopping:
                    break
                admit = []
                while self.waiting and len(admit) < len(self.idle):
                    admit.append(self.waiting.popleft())
            for job in admit:
                try:
                    self._admit(job)
                except Exception:  # a bug must cost one request, never the thread every request depends on
                    self._internal_error([job])
            if self.active:
                try:
                    self._step()
                except Exception:
                    self._internal_error([a.job for a in self.active])
                    for a in list(self.active):
                        self._release(a)
            self._gauges()
        for a in self.active:
            a.job.deliver(InternS1Error("the server is shutting down"))

    def _internal_error(self, jobs: list[Job]) -> None:
        traceback.print_exc()
        for job in jobs:
            job.deliver(InternalError("internal error in the scheduler (logged by the server); please report it"))

    def _admit(self, job: Job) -> None:
        if job.cancel.is_set():
            job.deliver(Finished(Stats(0, 0, 0, 0, 0.0, 0.0, "cancelled"), ()))
            return
        try:
            prompt = (self.engine.prepare_text(job.raw_prompt) if job.raw_prompt is not None
                      else self.engine.prepare(job.messages, job.tools, job.thinking, job.images))
        except InternS1Error as exc:
            job.deliver(exc)
            return
        try:
            conv = self._place(prompt)
            try:
                gen = self._with_room(lambda: conv.start_prompt(prompt, job.sampling, job.cancel))
            except BaseException:
                self.idle.append(conv)
                raise
        except InternS1Error as exc:
            job.deliver(exc)
            return
        finally:
            prompt.close()
        self.metrics.prompt(gen.n_prompt, gen.cached)
        active = _Active(job, conv, gen)
        self._emit(active, gen.sample(-1))

    def _place(self, prompt: Prompt) -> Conversation:
        """The idle sequence that shares the longest prefix with the prompt; if a longer one lives in another
        sequence (busy or idle), it is copied over, so it is never evaluated twice."""
        units = prompt.units
        conv = max(self.idle, key=lambda c: c.shared_prefix(units))
        self.idle.remove(conv)
        own = conv.shared_prefix(units)
        donors = [a.conv for a in self.active] + self.idle
        best = max(donors, key=lambda c: c.shared_prefix(units), default=None)
        if best is not None and best.shared_prefix(units) > own:
            conv.adopt_prefix(best, best.shared_prefix(units))
        return conv

    def _step(self) -> None:
        """One decode for every active reply, then one sampled token each."""
        now = time.monotonic()
        for a in self.active:
            if a.job.timeout_s is not None and now - a.job.submitted > a.job.timeout_s:
                a.job.cancel.set()
        running = [a for a in self.active if not a.job.cancel.is_set()]
        for a in list(self.active):
            if a.job.cancel.is_set():
                self._finish(a, a.gen.sample(-1))  # sees the cancel flag: no sampling, no decode
        if not running:
            return
        batch = [(a.gen.pending, a.conv.seq_id, a.gen.pos) for a in running]
        try:
            self._with_room(lambda: self.engine.backend.decode_step(batch))
        except InternS1Error as exc:  # full with every cell in use by a running reply: they all end here
            for a in running:
                self._release(a)
                a.job.deliver(exc)
            return
        for i, a in enumerate(running):
            a.gen.decoded()
            self._emit(a, a.gen.sample(i))

    def _emit(self, a: _Active, events: list[Any]) -> None:
        if events and a.job.first_token is None:
            a.job.first_token = time.monotonic()
            self.metrics.first_token(a.job.first_token - a.job.submitted)
        if a.gen.pending is not None and a not in self.active:
            self.active.append(a)
            self._gauges()  # before the client sees its first token, so /metrics already counts it
        for e in events:
            a.job.deliver(e)
        if a.gen.pending is None:
            self._finish(a, [])

    def _finish(self, a: _Active, events: list[Any]) -> None:
        for e in [*events, *a.gen.finish()]:
            if isinstance(e, Finished):
                self.metrics.finished(e.stats, time.monotonic() - a.job.submitted)
            a.job.deliver(e)
        self._release(a)

    def _release(self, a: _Active) -> None:
        a.gen.free()
        if a in self.active:
            self.active.remove(a)
            self._gauges()
        self.idle.append(a.conv)  # its cache stays: the next request with the same prefix reuses it

    def _with_room(self, evaluate: Callable[[], T]) -> T:
        """Run an evaluation; if the shared KV cache has no room for it (then nothing was evaluated), drop the idle
        sequences' caches and run it once more."""
        try:
            return evaluate()
        except ContextFullError:
            if not self._evict_idle():
                raise
            return evaluate()

    def _evict_idle(self) -> bool:
        """Drop the caches idle sequences keep for prefix reuse, to make room in the shared KV cache for running
        replies; True if there was one to drop."""
        kept = [conv for conv in self.idle if conv.cached]
        for conv in kept:
            conv.reset()
        self.metrics.evicted(len(kept))
        return bool(kept)

    def _gauges(self) -> None:
        with self.wake:
            self.metrics.set_queue(len(self.waiting), len(self.active))

