"""The server's scheduler (the real ``Scheduler`` and ``SequencePool``) against a fake engine, tests/scheduler_fakes.py:
the real llama.cpp cannot be made to fail on demand, nor a client made to leave between two lines of one round.

Random schedules, round by round: requests joining (chat and raw prompts sharing prefixes, with and without
timeouts), clients leaving at every point (between rounds, and at any call inside one), failures injected at every
call into the engine and the metrics (typed errors, a full KV cache, bugs), time passing. After every step:
  - every sequence is held by at most one job, and a job holds at most one;
  - idle + held = all sequences;
  - every sampler is freed once its reply ended (and never twice);
  - the fake saw no decode of a sequence nobody holds, no second reply started on a held sequence;
  - the count of accepted jobs is true: 429 only when every sequence and queue place is taken;
  - no job past its timeout is still waiting or decoding after a round;
  - each job gets at most one last item (Finished or an error), and nothing after it.
At the end (faults off) rounds run until nothing is left: every accepted job has ended (none waits forever).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_fakes import FaultyMetrics, FakeEngine, FakeLoop, Plan

from interns1_local.errors import InternS1Error
from interns1_local.runtime.engine import Engine
from interns1_local.runtime.generation import Finished, Sampling
from interns1_local.server.scheduler import Job, QueueFull, Scheduler, ShuttingDown


class Inbox(list):
    """A job's events queue: what the scheduler delivered, in order."""

    def put_nowait(self, item: Any) -> None:
        self.append(item)


def _last(item: Any) -> bool:
    return isinstance(item, (Finished, InternS1Error))


class Harness:
    def __init__(self, parallel: int, max_queue: int, n_ctx: int, plan: Plan) -> None:
        self.now, self.plan, self.parallel, self.capacity = 0.0, plan, parallel, parallel + max_queue
        self.engine = FakeEngine(plan, n_ctx)
        self.sched = Scheduler(self.engine, parallel, max_queue, FaultyMetrics(plan), clock=lambda: self.now)
        self.jobs: list[Job] = []
        plan.open_jobs = self.open_jobs  # a client leaving inside a round is one still waiting for its reply

    def open_jobs(self) -> list[Job]:
        return [j for j in self.jobs if not any(_last(i) for i in j.events)]

    def join(self, units: list[int], max_tokens: int, timeout: float | None, raw: bool) -> None:
        job = Job([{"role": "user", "content": units}], None, False, Sampling(max_tokens=max_tokens),
                  FakeLoop(self.plan), raw_prompt=" ".join(map(str, units)) if raw else None, timeout_s=timeout,
                  events=Inbox())
        busy = len(self.open_jobs())
        try:
            self.sched.submit(job)
        except QueueFull:
            assert busy >= self.capacity, f"429 with {busy} jobs open of {self.capacity} places"
            return
        self.jobs.append(job)

    def round(self) -> None:
        self.sched.round()
        self.check(after_round=True)

    def check(self, after_round: bool = False) -> None:
        pool, eng = self.sched.pool, self.engine
        assert not eng.violations, eng.violations
        held = [lease.conv.seq_id for lease in pool.leases]
        assert len(held) == len(set(held)), f"a sequence held twice: {held}"
        assert len({id(lease.job) for lease in pool.leases}) == len(held), "a job holds two sequences"
        assert sorted(held + [c.seq_id for c in pool.idle]) == list(range(self.parallel)), "idle + held != all"
        live = {lease.gen.sampler for lease in pool.leases if lease.gen is not None}
        assert {s for s, freed in eng.samplers.items() if not freed} == live, "a sampler of an ended reply leaks"
        for job in self.jobs:
            ends = [i for i, item in enumerate(job.events) if _last(item)]
            assert len(ends) <= 1 and (not ends or ends[0] == len(job.events) - 1), job.events
        open_jobs = self.open_jobs()
        assert self.sched.accepted == len(open_jobs), "the count behind 429 drifted"
        waiting_or_held = [*self.sched.waiting, *(lease.job for lease in pool.leases)]
        assert all(j in open_jobs for j in waiting_or_held), "an ended job still waits or holds a sequence"
        if after_round:
            assert not any(j.expired(self.now) for j in waiting_or_held), "a job outlived its timeout"

    def drain(self) -> None:
        self.plan.quiet()
        for _ in range(20 * len(self.jobs) + 10):
            if not (self.sched.waiting or self.sched.pool.leases):
                break
            self.round()
        assert not self.open_jobs(), "a job waits forever"


UNITS = st.lists(st.integers(1, 3), min_size=1, max_size=6)  # a tiny alphabet: prompts share prefixes
JOIN = st.tuples(UNITS, st.integers(1, 6), st.sampled_from([None, None, 0.5, 3.0]), st.booleans())
# a schedule: steps of (requests joining, clients of open jobs leaving, seconds passing, rounds run)
STEPS = st.lists(st.tuples(st.lists(JOIN, max_size=3), st.lists(st.integers(0, 5), max_size=1),
                           st.sampled_from([0.0, 0.0, 0.2, 1.0]), st.integers(1, 3)), min_size=1, max_size=12)
PLAN = st.builds(Plan, seed=st.integers(0, 2**32 - 1), fault_rate=st.sampled_from([0.0, 0.02, 0.1]),
                 cancel_rate=st.sampled_from([0.0, 0.05, 0.15]))


def _play(parallel: int, max_queue: int, n_ctx: int, plan: Plan, steps: list[tuple], stop: bool) -> Harness:
    h = Harness(parallel, max_queue, n_ctx, plan)
    for joins, leaves, seconds, rounds in steps:
        for join in joins:
            h.join(*join)
            h.check()
        for leave in leaves:
            open_jobs = h.open_jobs()
            if open_jobs:
                open_jobs[leave % len(open_jobs)].cancel.set()
        h.now += seconds
        for _ in range(rounds):
            h.round()
    if stop:  # the server stops: every job ends (with an error), and nothing is accepted after
        h.sched.stopping = True
        h.sched.shut_down()
        h.check()
        assert not h.open_jobs()
        with pytest.raises(ShuttingDown):
            h.sched.submit(Job([], None, False, Sampling(), FakeLoop(plan)))
    h.drain()
    return h


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(parallel=st.integers(1, 4), max_queue=st.integers(0, 2), n_ctx=st.integers(6, 24), plan=PLAN, steps=STEPS,
       stop=st.booleans())
def test_random_schedules_keep_every_invariant(parallel, max_queue, n_ctx, plan, steps, stop) -> None:
    _play(parallel, max_queue, n_ctx, plan, steps, stop)


def test_a_client_leaving_inside_a_round_ends_its_job_once() -> None:
    """The double release, fixed: two decoding jobs; the first one's client leaves, and while the scheduler ends
    it (delivering its Finished), the second's client leaves too. The second must end once, and its sequence must
    come back once, not twice."""
    plan = Plan()
    h = Harness(2, 2, 64, plan)
    h.join([1, 2], 4, None, False)
    h.join([3, 1], 4, None, False)
    h.round()
    h.jobs[0].cancel.set()
    plan.cancels[plan.calls + 2] = 1  # the second call from here, inside the ending of the first job:
    # the second open job's client leaves
    h.round()
    assert [isinstance(j.events[-1], Finished) and j.events[-1].stats.finish_reason for j in h.jobs] == [
        "cancelled", "cancelled"]
    h.join([2, 2], 2, None, False)
    h.join([3, 3], 2, None, False)
    h.drain()


def test_a_failure_after_the_prompt_gives_the_sequence_back() -> None:
    """A bug in the metrics right after a prompt was evaluated: that request fails (500), its sampler is freed, its
    sequence comes back; with one sequence, the next request is still served."""
    plan = Plan(faults={3: "bug"})  # the third call: prepare, prefill, then metrics.prompt
    h = Harness(1, 1, 64, plan)
    h.join([1, 2, 3], 3, None, False)
    h.round()
    assert isinstance(h.jobs[0].events[-1], InternS1Error)
    h.join([1, 2, 3], 3, None, False)
    h.drain()
    assert isinstance(h.jobs[1].events[-1], Finished) and h.jobs[1].events[-1].stats.generated_tokens == 3


def test_a_queued_job_times_out() -> None:
    plan = Plan()
    h = Harness(1, 1, 64, plan)
    h.join([1, 2], 4, None, False)
    h.round()
    h.join([2, 1], 4, 0.5, False)  # waits behind the first
    h.round()
    h.now += 1.0
    h.round()
    assert type(h.jobs[1].events[-1]).__name__ == "QueueTimeout"


@pytest.mark.parametrize("max_queue", [0, 2])
def test_capacity_is_sequences_plus_queue(max_queue) -> None:
    """Before the scheduler thread picks anything up, a burst of parallel + max_queue jobs is accepted, one more is
    refused; --queue 0 still serves as many jobs as there are sequences."""
    h = Harness(3, max_queue, 64, Plan())
    for i in range(3 + max_queue):
        h.join([1, i + 1], 2, None, False)
    assert len(h.jobs) == 3 + max_queue
    with pytest.raises(QueueFull):
        h.sched.submit(Job([{"role": "user", "content": [1]}], None, False, Sampling(), FakeLoop(h.plan)))
    h.drain()


# -- the thread, and shutdown --------------------------------------------------------------------------------------
def _threaded(plan: Plan, hold: threading.Event | None = None) -> tuple[FakeEngine, Scheduler, list[Job]]:
    """A scheduler thread serving three jobs; with ``hold``, its first decode step waits for it."""
    engine = FakeEngine(plan, 4096)
    engine.backend.hold = hold
    sched = Scheduler(engine, 2, 4, FaultyMetrics(plan))
    sched.start()
    jobs = [Job([{"role": "user", "content": [1, i]}], None, False, Sampling(max_tokens=50), FakeLoop(plan),
                events=Inbox()) for i in range(3)]
    for job in jobs:
        sched.submit(job)
    return engine, sched, jobs


def _until(condition: Any, why: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.01)


def test_the_thread_serves_every_job_and_stops() -> None:
    engine, sched, jobs = _threaded(Plan())
    _until(lambda: all(j.events and _last(j.events[-1]) for j in jobs), "a job was never served")
    assert [j.events[-1].stats.generated_tokens for j in jobs] == [50, 50, 50]
    sched.stop(wait_s=10)
    assert not sched.thread.is_alive()


def test_close_waits_for_the_decode_in_progress() -> None:
    """Shutdown while llama_decode runs longer than stop() waits: Engine.close frees the context only once the
    decode returned, and the scheduler touches nothing after."""
    engine, sched, jobs = _threaded(Plan(), threading.Event())
    _until(engine.backend.in_decode.is_set, "no decode started")
    sched.stop(wait_s=0.05)
    assert sched.thread.is_alive()  # still inside the decode
    closer = threading.Thread(target=Engine.close, args=(engine, 10.0))
    closer.start()
    time.sleep(0.2)
    assert not engine.backend.closed  # waiting for the decode
    engine.backend.hold.set()
    closer.join(timeout=10)
    sched.thread.join(timeout=10)
    assert engine.backend.closed and not engine.violations
    assert all(isinstance(j.events[-1], ShuttingDown) for j in jobs)


def test_close_keeps_the_context_of_a_decode_that_never_returns(capsys) -> None:
    """A decode that does not return within the wait: the context is not freed (it stays allocated until the process
    exits); close says so and returns."""
    engine, sched, _ = _threaded(Plan(), threading.Event())
    _until(engine.backend.in_decode.is_set, "no decode started")
    sched.stop(wait_s=0.05)
    Engine.close(engine, wait_s=0.2)
    assert not engine.backend.closed
    assert "decode still running" in capsys.readouterr().err
    engine.backend.hold.set()  # the decode returns at last: the scheduler leaves without another round
    sched.thread.join(timeout=10)
    assert not sched.thread.is_alive() and not engine.violations
