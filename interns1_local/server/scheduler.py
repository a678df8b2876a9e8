"""Continuous batching: one thread owns the llama.cpp context and decodes every active reply in one batch per round.

Requests join between rounds (their prompt evaluated on the sequence whose cache shares the longest prefix with it,
or with that prefix copied from a busy sequence) and leave as soon as they finish or are cancelled. Events go back to
each request's asyncio queue through its event loop. A finished reply's sequence keeps its cache for the next request
with the same prefix; when the shared KV cache has no room for a prompt or a step, those idle caches are dropped and
the evaluation tried once more.

Every accepted job ends exactly once (``_end``: its sequence released through the pool, then its last item delivered,
``Finished`` or an error), whatever fails on the way. The server accepts as many jobs as it has sequences plus
``max_queue``; a job that waits longer than its timeout, or whose client left, ends without a sequence.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from interns1_local.errors import ContextFullError, InternS1Error

from ..runtime.engine import Engine, Media
from ..runtime.generation import Finished, Sampling, Stats
from .metrics import Metrics
from .sequences import Lease, SequencePool

T = TypeVar("T")


class QueueFull(Exception):
    """Every sequence is busy and the waiting queue is full."""


class InternalError(InternS1Error):
    """A bug met while serving a request (the HTTP layer answers 500)."""


class QueueTimeout(InternS1Error):
    """A request waited for a free sequence longer than its timeout (the HTTP layer answers 503)."""


class ShuttingDown(InternS1Error):
    """The server stopped while the request waited or decoded."""


class EngineLost(InternS1Error):
    """llama.cpp cannot go on (an RPC worker holding some of the model's layers was lost): every request fails
    until the server is restarted."""


@dataclass(eq=False)
class Job:
    """One request: a chat (messages, tools, images and videos already loaded) or a raw text prompt."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    thinking: bool
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    media: list[Media] = field(default_factory=list)
    raw_prompt: str | None = None
    timeout_s: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)  # set again by Scheduler.submit, on its clock
    first_token: float | None = None
    ended: bool = False

    def deliver(self, item: Any) -> None:
        """From the scheduler thread: an event, ``Finished``, or an exception for the request to raise."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is gone, and nobody waits for this
            pass

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.submitted > self.timeout_s


class Scheduler:
    def __init__(self, engine: Engine, parallel: int, max_queue: int, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine, self.metrics, self.clock = engine, metrics, clock
        self.pool = SequencePool([engine.conversation() for _ in range(parallel)])
        self.capacity = parallel + max_queue  # jobs accepted and not yet ended
        self.accepted = 0
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.lost: EngineLost | None = None  # set once llama.cpp has failed for good (``lose``)
        self.thread = threading.Thread(target=self._run, name="interns1-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, wait_s: float = 30.0) -> None:
        """End every job and stop the thread; the engine (``Engine.close``) then waits for a round still running."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=0 if self.lost else wait_s)  # after ``lose`` the thread never comes back

    def submit(self, job: Job) -> None:
        with self.wake:
            if self.lost:
                raise self.lost
            if self.stopping:
                raise ShuttingDown("the server is shutting down")
            if self.accepted >= self.capacity:
                raise QueueFull
            self.accepted += 1
            job.submitted = self.clock()
            self.waiting.append(job)
            self.metrics.set_queue(len(self.waiting), len(self.pool.leases), len(self.pool.idle))
            self.wake.notify()

    def lose(self, reason: str) -> None:
        """On the scheduler thread, where llama.cpp is about to abort the process inside a decode (ggml's abort
        callback): every job ends with ``EngineLost`` and new ones are refused, without one more call into llama.cpp
        (its state is broken). The caller must then never return into llama.cpp: this thread is given up."""
        self.lost = EngineLost(f"{reason}. The server cannot answer without those layers: restart it")
        with self.wake:
            jobs = [*self.waiting, *(lease.job for lease in self.pool.leases)]
            self.waiting.clear()
        for job in jobs:
            if not job.ended:
                job.ended = True
                job.deliver(self.lost)

    # -- the scheduler thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while self._wait():
            with self.engine.guard.use() as alive:
                if not alive:  # the engine was closed without stop(): nothing may touch the context now
                    break
                try:
                    self.round()
                except Exception as exc:  # a bug outside any one job's part: the held ones end, the thread goes on
                    self._end_all([lease.job for lease in self.pool.leases], _as_error(exc))
        with self.engine.guard.use():
            self.shut_down()

    def _wait(self) -> bool:
        """Until there is work (False: stop). While any sequence is held, rounds run back to back, so queued jobs
        are checked for their timeout at every step; with none held, nothing waits."""
        with self.wake:
            while not self.stopping and not self.pool.leases and not (self.waiting and self.pool.idle):
                self.wake.wait()
            return not self.stopping

    def round(self) -> None:
        """Drop queued jobs that expired or were cancelled, admit what the idle sequences can take, decode one step."""
        now = self.clock()
        with self.wake:
            gone = [j for j in self.waiting if j.cancel.is_set() or j.expired(now)]
            for job in gone:
                self.waiting.remove(job)
            admit = [self.waiting.popleft() for _ in range(min(len(self.waiting), len(self.pool.idle)))]
        for job in gone:
            self._end(job, [_cancelled()] if job.cancel.is_set() else [QueueTimeout(
                f"no sequence came free within the request's {job.timeout_s:g} s (--timeout); retry later")])
        for job in admit:
            with self._failing(job):
                self._admit(job)
        if self.pool.leases:
            self._step(now)
        self._gauges()

    def shut_down(self) -> None:
        with self.wake:
            jobs = [*self.waiting, *(lease.job for lease in self.pool.leases)]
            self.waiting.clear()
        self._end_all(jobs, ShuttingDown("the server is shutting down"))

    def _end_all(self, jobs: list[Job], error: InternS1Error) -> None:
        for job in jobs:
            with self._failing(job):
                self._end(job, [error])

    @contextmanager
    def _failing(self, job: Job) -> Iterator[None]:
        """Whatever fails while serving ``job`` ends it (and only it) with an error; a bug is logged and never costs
        the thread every request depends on."""
        try:
            yield
        except Exception as exc:
            self._end(job, [_as_error(exc)])

    def _end(self, job: Job, last: list[Any]) -> None:
        """The one way a job ends: its sequence (if it holds one) released, its last items delivered. Once."""
        if job.ended:
            return
        job.ended = True
        lease = self.pool.lease_of(job)
        try:
            if lease is not None:
                self.pool.release(lease)
        finally:
            with self.wake:
                self.accepted -= 1
            for item in last:
                job.deliver(item)

    def _admit(self, job: Job) -> None:
        if job.cancel.is_set():
            self._end(job, [_cancelled()])
            return
        prompt = (self.engine.prepare_text(job.raw_prompt) if job.raw_prompt is not None
                  else self.engine.prepare(job.messages, job.tools, job.thinking, job.media))
        try:
            lease = self.pool.take(job, prompt.units)
            self.pool.share_prefix(lease, prompt.units)
            lease.gen = self._with_room(lambda: lease.conv.start_prompt(prompt, job.sampling, job.cancel))
        finally:
            prompt.close()
        self.metrics.prompt(lease.gen.n_prompt, lease.gen.cached)
        self._gauges()  # before the client sees its first token, so /metrics already counts it
        self._emit(lease, lease.gen.sample(-1))

    def _step(self, now: float) -> None:
        """One decode for every held sequence whose job goes on, then one sampled token each."""
        for lease in self.pool.leases:
            if lease.job.expired(now):
                lease.job.cancel.set()
        cancelled = {lease for lease in self.pool.leases if lease.job.cancel.is_set()}  # read once: a client may
        running = [lease for lease in self.pool.leases if lease not in cancelled]  # leave at any moment
        for lease in cancelled:
            with self._failing(lease.job):
                self._finish(lease, [])  # no sample, no decode
        if not running:
            return
        batch = [(lease.gen.pending, lease.conv.seq_id, lease.gen.pos) for lease in running]
        try:
            self._with_room(lambda: self.engine.backend.decode_step(batch))
        except Exception as exc:  # full with every cell held by a running reply, or a failure: they all end here
            self._end_all([lease.job for lease in running], _as_error(exc))
            return
        for i, lease in enumerate(running):
            with self._failing(lease.job):
                lease.gen.decoded()
                self._emit(lease, lease.gen.sample(i))

    def _emit(self, lease: Lease, events: list[Any]) -> None:
        job = lease.job
        if events and job.first_token is None:
            job.first_token = self.clock()
            self.metrics.first_token(job.first_token - job.submitted)
        for e in events:
            job.deliver(e)
        if lease.gen.pending is None:
            self._finish(lease, [])

    def _finish(self, lease: Lease, events: list[Any]) -> None:
        last = [*events, *lease.gen.finish()]
        for e in last:
            if isinstance(e, Finished):
                self.metrics.finished(e.stats, self.clock() - lease.job.submitted)
        self._end(lease.job, last)

    def _with_room(self, evaluate: Callable[[], T]) -> T:
        """Run an evaluation; if the shared KV cache has no room for it (then nothing was evaluated), drop the idle
        sequences' caches and run it once more."""
        try:
            return evaluate()
        except ContextFullError:
            dropped = self.pool.evict_idle()
            self.metrics.evicted(dropped)
            if not dropped:
                raise
            return evaluate()

    def _gauges(self) -> None:
        with self.wake:
            self.metrics.set_queue(len(self.waiting), len(self.pool.leases), len(self.pool.idle))


def _as_error(exc: Exception) -> InternS1Error:
    """What a request gets for an exception: ours as it is; anything else is a bug, logged here."""
    if isinstance(exc, InternS1Error):
        return exc
    traceback.print_exception(exc)
    return InternalError("internal error in the scheduler (logged by the server); please report it")


def _cancelled() -> Finished:
    return Finished(Stats(0, 0, 0, 0, 0.0, 0.0, "cancelled"), ())
