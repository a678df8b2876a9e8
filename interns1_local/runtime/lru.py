"""A least-recently-used map bounded by the bytes of its values: the engine's caches (tiles' projector outputs,
decoded videos) are this, each with its own measure of a value's size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesLRU(Generic[K, V]):
    """Values by key, least recently used first out once their sizes (``size(value)``, bytes) pass ``max_bytes``; a
    value larger than the bound is not kept. Thread-safe (a server loads media on several threads)."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes, self.nbytes, self._size = max_bytes, 0, size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        size = self._size(value)
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                self.nbytes -= self._size(self._items.popitem(last=False)[1])
