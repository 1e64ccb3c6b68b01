"""Partition ownership: which worker may write the state folded from a Kafka partition.

Kafka gives each partition to one member of a consumer group, but a member that
stalled past its session timeout (a long GC pause, a frozen VM) does not know it
lost its partitions until it next talks to the broker, and may still write what
it folded. Every claim of a partition therefore takes a new *epoch* from one
counter per group and topic in MongoDB, so a later claim always holds a higher
epoch, and every document a worker writes carries the epoch it was written
under (``_e``). A write is conditional on the stored document's epoch not being
higher than the writer's: the stalled member's writes are refused once the new
owner has written, and the refusal tells it that it lost the partition
(:class:`PartitionsLost`). Documents the new owner has not written yet may
still take the stalled member's last write, which is harmless because state
documents also carry per-partition offset watermarks that the new owner merges
with when it first touches them.

A worker that gets a partition back with nobody having claimed it in between
keeps what it held in memory; otherwise it starts again from the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from telemetry_common.timefmt import utcnow

log = logging.getLogger(__name__)

PARTITION_OWNERS = "partition_owners"


class PartitionsLost(Exception):
    """Some of a batch's partitions are owned by a newer claim: their writes were refused."""

    def __init__(self, partitions: Iterable[int]):
        self.partitions = frozenset(partitions)
        super().__init__(f"partitions {sorted(self.partitions)} were claimed by another worker")


def not_newer_than(epoch: int) -> dict[str, Any]:
    """The filter clause a write by ``epoch`` carries: the stored document, if any, is not
    newer (documents written before epochs existed have none and match too)."""
    return {"_e": {"$not": {"$gt": epoch}}}


@dataclass(frozen=True, slots=True)
class Claim:
    partition: int
    epoch: int
    # Nobody claimed the partition since this worker's previous claim of it, so
    # what it still holds in memory for the partition is exact.
    continues_previous: bool


class PartitionOwnership:
    """The epochs under which this worker holds its partitions of one topic."""

    def __init__(self, db: AsyncDatabase, service: str, group: str, topic: str, owner: str):
        self._owners = db[PARTITION_OWNERS]
        # One counter for every group of the service: they write the same state
        # documents, so a new group (or a reset one) must claim above them all.
        self._counter = f"epoch|{service}"
        self._prefix = f"{service}|{group}|{topic}"
        self._owner = owner
        self._held: dict[int, int] = {}
        # The epoch of each partition's last claim by this worker, kept after it is
        # revoked, to tell on the next claim whether anyone else held it since.
        self._last: dict[int, int] = {}

    def epoch(self, partition: int) -> int | None:
        return self._held.get(partition)

    @property
    def held(self) -> dict[int, int]:
        return dict(self._held)

    async def claim(self, partition: int) -> Claim:
        counter = await self._owners.find_one_and_update(
            {"_id": self._counter},
            {"$inc": {"epoch": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        epoch = int(counter["epoch"])
        previous = await self._owners.find_one_and_update(
            {"_id": f"{self._prefix}|{partition}"},
            {
                "$max": {"epoch": epoch},
                "$set": {"owner": self._owner, "claimed_at": utcnow()},
            },
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        previous_epoch = previous.get("epoch") if previous else None
        continues = previous_epoch is not None and previous_epoch == self._last.get(partition)
        self._held[partition] = epoch
        self._last[partition] = epoch
        log.info("claimed partition %d at epoch %d", partition, epoch)
        return Claim(partition, epoch, continues)

    async def outrank(self, epoch: int) -> None:
        """Make every later claim higher than ``epoch``, an epoch found on a stored document
        that no claim recorded (the counter was deleted or the store restored)."""
        await self._owners.update_one(
            {"_id": self._counter}, {"$max": {"epoch": epoch}}, upsert=True
        )

    async def counter(self) -> int:
        doc = await self._owners.find_one({"_id": self._counter})
        return int(doc["epoch"]) if doc else 0

    def release(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._held.pop(partition, None)
