"""Counters for ``GET /metrics`` in Prometheus' text format (written by hand: a handful of series needs no library)."""

from __future__ import annotations

import threading
from collections import Counter

from ..runtime.engine import Stats

# seconds; the last bucket is +Inf
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[next((i for i, b in enumerate(BUCKETS) if value <= b), len(BUCKETS))] += 1
        self.total, self.n = self.total + value, self.n + 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return [*out, f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]


class Metrics:
    """Updated from the request handlers and the scheduler thread; read by /metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.tokens: Counter[str] = Counter()
        self.finish: Counter[str] = Counter()
        self.ttft, self.latency = _Histogram(), _Histogram()
        self.queue_depth = self.active = self.idle = self.evictions = 0

    def request(self, route: str, status: int) -> None:
        with self.lock:
            self.requests[route, status] += 1

    def prompt(self, n_prompt: int, cached: int) -> None:
        with self.lock:
            self.tokens["prompt"] += n_prompt
            self.tokens["cached"] += cached

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.ttft.observe(seconds)

    def finished(self, stats: Stats, seconds: float) -> None:
        with self.lock:
            self.tokens["generated"] += stats.generated_tokens
            self.finish[stats.finish_reason] += 1
            self.latency.observe(seconds)

    def evicted(self, sequences: int) -> None:
        with self.lock:
            self.evictions += sequences

    def set_queue(self, waiting: int, active: int, idle: int) -> None:
        with self.lock:
            self.queue_depth, self.active, self.idle = waiting, active, idle

    def render(self) -> str:
        with self.lock:
            lines = ["# TYPE interns1_requests_total counter"]
            lines += [f'interns1_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in
                      sorted(self.requests.items())]
            lines.append("# TYPE interns1_tokens_total counter")
            lines += [f'interns1_tokens_total{{kind="{k}"}} {self.tokens[k]}' for k in ("prompt", "cached",
                                                                                       "generated")]
            lines.append("# TYPE interns1_finished_total counter")
            lines += [f'interns1_finished_total{{reason="{r}"}} {n}' for r, n in sorted(self.finish.items())]
            lines += ["# TYPE interns1_time_to_first_token_seconds histogram",
                      *self.ttft.lines("interns1_time_to_first_token_seconds"),
                      "# TYPE interns1_request_seconds histogram", *self.latency.lines("interns1_request_seconds"),
                      "# TYPE interns1_queue_depth gauge", f"interns1_queue_depth {self.queue_depth}",
                      "# TYPE interns1_active_sequences gauge", f"interns1_active_sequences {self.active}",
                      "# TYPE interns1_idle_sequences gauge", f"interns1_idle_sequences {self.idle}",
                      "# TYPE interns1_cache_evictions_total counter",
                      f"interns1_cache_evictions_total {self.evictions}"]
        return "\n".join(lines) + "\n"
