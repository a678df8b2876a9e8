"""The Responses API's stored responses (``store: true``): bounded in memory by count and by bytes, least recently
used first out. Nothing is written to disk; a restart forgets them, as ``previous_response_id`` clients expect of a
local server. Only the event loop touches it (handlers are coroutines), so it needs no lock."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_RESPONSES = 1000
MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Stored:
    """A response as returned, and the conversation it ends (chat-template messages, instructions excluded: a
    continuation brings its own, as OpenAI's does)."""

    response: dict[str, Any]
    messages: list[dict[str, Any]]
    size: int


class ResponseStore:
    def __init__(self, max_items: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self.items: OrderedDict[str, Stored] = OrderedDict()
        self.bytes = 0

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
        """Keep a response, evicting the least recently used ones to make room; False when it alone is too big."""
        size = len(json.dumps(response, ensure_ascii=False)) + len(json.dumps(messages, ensure_ascii=False))
        if size > self.max_bytes:
            return False
        self.delete(response["id"])
        while self.items and (len(self.items) >= self.max_items or self.bytes + size > self.max_bytes):
            _, old = self.items.popitem(last=False)
            self.bytes -= old.size
        self.items[response["id"]] = Stored(response, messages, size)
        self.bytes += size
        return True

    def get(self, response_id: str) -> Stored | None:
        found = self.items.get(response_id)
        if found is not None:
            self.items.move_to_end(response_id)
        return found

    def delete(self, response_id: str) -> bool:
        found = self.items.pop(response_id, None)
        if found is not None:
            self.bytes -= found.size
        return found is not None
