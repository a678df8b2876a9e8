"""Freeing llama.cpp's context only when no thread is inside it.

The server's scheduler thread runs ``llama_decode``; the main thread frees the context when the server stops. A
``ContextGuard`` is held for every round of work on the context (``use``) and taken by ``close`` before anything is
freed, so the context is never freed under a running decode. A decode that never returns (a hung GPU driver) keeps the
context allocated: ``close`` gives up after its wait, says so, and leaves the memory to the exiting process.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ContextGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.closed = self.freed = False

    @contextmanager
    def use(self) -> Iterator[bool]:
        """Hold the context for one round of work; yields False once it is closed (then nothing may touch it)."""
        with self._lock:
            yield not self.closed

    def close(self, free: Callable[[], None], wait_s: float) -> bool:
        """Call ``free`` (once, over all calls) when the round in progress, if any, is over; True if this call freed.
        After ``wait_s`` seconds of waiting nothing is freed: the memory stays allocated rather than freed under
        llama_decode."""
        self.closed = True  # no round starts from now on
        if not self._lock.acquire(timeout=wait_s):
            print(f"warning: a decode still running after {wait_s:.0f} s; the model stays in memory until the "
                  "process exits", file=sys.stderr)
            return False
        try:
            if self.freed:
                return False
            self.freed = True
            free()
            return True
        finally:
            self._lock.release()
