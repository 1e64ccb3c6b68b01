"""Event ids acknowledged lately, so a retried request is answered "duplicate" cheaply.

Only an optimisation: the workers' writes are idempotent, so a duplicate that
this bounded memory has forgotten (or that reaches another replica) is still
stored and counted once.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentEventIds:
    def __init__(self, capacity: int):
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add_all(self, event_ids: list[str]) -> None:
        """Remember ids Kafka acknowledged; never call it for ids that were not."""
        if self._capacity == 0:
            return
        for event_id in event_ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
