"""The bounded memory the API keeps per key (recent event ids, rate-limit buckets)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LeastRecentlyUsed(Generic[K, V]):
    """At most ``capacity`` entries: one more forgets the entry least recently put or got.

    A plain ``OrderedDict`` underneath, not a cache library: it sits on the per-reading
    path, where each extra call shows in requests per second.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        """Whether ``key`` is held; asking is not a use."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        try:
            self._entries.move_to_end(key)
        except KeyError:
            return None
        return self._entries[key]

    def put(self, key: K, value: V) -> None:
        if self.capacity <= 0:
            return
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > self.capacity:
            entries.popitem(last=False)
