"""Which request holds which llama.cpp sequence: one place that owns a sequence's life.

A ``Lease`` is one job's hold on one sequence, from ``take`` (the idle sequence whose cache shares the longest prefix
with the prompt) to ``release`` (the sampler freed, the sequence idle again). ``release`` is the only way back to
``idle`` and does its work once, whatever failed before, so a sequence is never handed to two requests and never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime.engine import Conversation, Unit
    from ..runtime.generation import Generation


@dataclass(eq=False)
class Lease:
    """One job's hold on one sequence; ``gen`` once its prompt is evaluated."""

    job: Any  # scheduler.Job (typed loosely: that module imports this one)
    conv: Conversation
    gen: Generation | None = None
    released: bool = False


class SequencePool:
    """Every sequence of the context, each either idle (keeping its cache for prefix reuse) or held by one lease."""

    def __init__(self, conversations: list[Conversation]) -> None:
        self.all = list(conversations)
        self.idle = list(conversations)
        self.leases: list[Lease] = []

    def lease_of(self, job: Any) -> Lease | None:
        return next((lease for lease in self.leases if lease.job is job), None)

    def take(self, job: Any, units: list[Unit]) -> Lease:
        """An idle sequence, now held by ``job``: the one whose cache loses least to this prompt (of those, the one
        sharing the longest prefix with it). ``share_prefix`` then copies the longest prefix any sequence holds, so
        an unrelated prompt never overwrites a long idle cache it shares three tokens with."""
        conv = max(self.idle, key=lambda c: (c.shared_prefix(units) - len(c.cached), c.shared_prefix(units)))
        self.idle.remove(conv)
        lease = Lease(job, conv)
        self.leases.append(lease)
        return lease

    def share_prefix(self, lease: Lease, units: list[Unit]) -> None:
        """If another sequence (held or idle) caches a longer prefix of the prompt than the lease's own, copy it
        over (llama.cpp shares the cells), so a prefix is never evaluated twice."""
        own = lease.conv.shared_prefix(units)
        donors = [other.conv for other in self.leases if other is not lease] + self.idle
        best = max(donors, key=lambda c: c.shared_prefix(units), default=None)
        if best is not None and best.shared_prefix(units) > own:
            lease.conv.adopt_prefix(best, best.shared_prefix(units))

    def release(self, lease: Lease) -> None:
        """Free the lease's sampler and make its sequence idle (its cache stays for the next request with the same
        prefix). Once: a second call does nothing."""
        if lease.released:
            return
        lease.released = True
        self.leases.remove(lease)
        self.idle.append(lease.conv)
        if lease.gen is not None:
            lease.gen.free()

    def evict_idle(self) -> int:
        """Drop the caches idle sequences keep for prefix reuse (room in the shared KV cache for held ones); how many
        there were."""
        kept = [conv for conv in self.idle if conv.cached]
        for conv in kept:
            conv.reset()
        return len(kept)
