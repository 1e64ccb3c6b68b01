"""How far a consumer has read each partition, as a clock to judge silence by.

A device is silent when no reading of it has been *read* for a while; judged on
the wall clock alone, a worker that was down or is behind would think every
device of a lagging partition silent. So each partition's clock is:

* the wall clock while the consumer has handled everything the partition holds
  (caught up: a reading not seen now has not been sent);
* otherwise the time Kafka received the newest record handled (CreateTime, set
  when ingestion-api published it): what the consumer knows of the partition
  reaches only that far;
* unknown from the moment the partition is assigned until either is known.

The consume loop updates it (``ConsumerLoop``); a worker reads it (the alerts
worker's absent rules).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(slots=True)
class _Partition:
    newest_ms: float | None = None
    caught_up: bool = False


class ConsumerProgress:
    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def handled(self, partition: int, newest_ms: float, next_offset: int, end: int | None) -> None:
        """Records up to ``next_offset`` (exclusive) were handled, the newest received at
        ``newest_ms``; ``end``: the partition's end offset as last fetched (None: unknown)."""
        state = self._partitions.setdefault(partition, _Partition())
        if state.newest_ms is None or newest_ms > state.newest_ms:
            state.newest_ms = newest_ms
        state.caught_up = end is not None and next_offset >= end

    def idle(self, partition: int, position: int, end: int | None) -> None:
        """A fetch found nothing to hand over: everything before ``position`` was handled."""
        state = self._partitions.setdefault(partition, _Partition())
        state.caught_up = end is not None and position >= end

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._partitions.pop(partition, None)

    def clock(self, partition: int, now: datetime) -> datetime | None:
        """Up to when the partition's readings are known; None until that is known."""
        state = self._partitions.get(partition)
        if state is None:
            return None
        if state.caught_up:
            return now
        if state.newest_ms is None:
            return None
        return min(now, datetime.fromtimestamp(state.newest_ms / 1000, UTC))
