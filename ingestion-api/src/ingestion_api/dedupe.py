"""Event ids acknowledged lately, so a retried request is answered "duplicate" cheaply.

Only an optimisation: the workers' writes are idempotent, so a duplicate that
this bounded memory has forgotten (or that reaches another replica) is still
stored and counted once.
"""

from __future__ import annotations

from ingestion_api.lru import LeastRecentlyUsed


class RecentEventIds(LeastRecentlyUsed[str, None]):
    def add_all(self, event_ids: list[str]) -> None:
        """Remember ids Kafka acknowledged; never call it for ids that were not."""
        for event_id in event_ids:
            self.put(event_id, None)
