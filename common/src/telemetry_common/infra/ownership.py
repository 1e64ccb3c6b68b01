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

from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.errors import TelemetryError
from telemetry_common.infra.mongo import Database

log = logging.getLogger(__name__)

PARTITION_OWNERS = "partition_owners"


class PartitionsLost(TelemetryError):
    """Some of a batch's partitions are owned by a newer claim: their writes were refused.

    Not transient: the batch is not retried as it is, the consumer lets the
    partitions go (the new owner replays them)."""

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

    def __init__(self, db: Database, service: str, group: str, topic: str, owner: str):
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
        assert counter is not None, "an upsert returning the document after always has one"
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

    async def newer_claims(self, epochs: dict[int, int]) -> set[int]:
        """Of the partitions held at these epochs, those claimed since by a newer epoch."""
        if not epochs:
            return set()
        ids = {f"{self._prefix}|{partition}": partition for partition in epochs}
        newer = set()
        async for doc in self._owners.find({"_id": {"$in": list(ids)}}, {"epoch": 1}):
            partition = ids[doc["_id"]]
            if doc.get("epoch", 0) > epochs[partition]:
                newer.add(partition)
        return newer

    def release(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._held.pop(partition, None)


class OwnedPartitions:
    """The partitions Kafka assigned to this worker, and the epochs it writes them under.

    Shared by the workers that hold per-partition state: they call :meth:`assign`
    and :meth:`revoke` from their rebalance listener, ask :meth:`epochs` before
    each write round, and hand what a fenced write found to :meth:`lost_or_reclaimed`.
    """

    def __init__(self, ownership: PartitionOwnership):
        self.ownership = ownership
        self.assigned: set[int] = set()

    async def assign(self, partitions: Iterable[int]) -> set[int]:
        """Claim each partition; return those whose state held in memory is still exact
        (nobody claimed them since this worker's previous claim)."""
        self.assigned = set(partitions)
        kept = set()
        for partition in sorted(self.assigned):
            try:
                claim = await self.ownership.claim(partition)
            except Exception as exc:
                # The first write round of the partition claims it (with retries).
                log.warning("could not claim partition %d yet: %r", partition, exc)
                continue
            if claim.continues_previous:
                kept.add(partition)
        return kept

    def revoke(self, partitions: Iterable[int]) -> None:
        partitions = set(partitions)
        self.assigned -= partitions
        self.ownership.release(partitions)

    async def epochs(self, partitions: Iterable[int]) -> tuple[dict[int, int], set[int]]:
        """The epoch of each partition, and those no longer assigned here.

        A partition assigned but not claimed yet (MongoDB was away during the
        rebalance) is claimed now. One revoked is never claimed again from here:
        a worker that stalled would otherwise take it back from its new owner.
        """
        epochs, revoked = {}, set()
        for partition in partitions:
            epoch = self.ownership.epoch(partition)
            if epoch is None and partition in self.assigned:
                epoch = (await self.ownership.claim(partition)).epoch
            if epoch is None:
                revoked.add(partition)
            else:
                epochs[partition] = epoch
        return epochs, revoked

    async def lost_or_reclaimed(self, newer: dict[int, int]) -> set[int]:
        """Of the partitions with documents written under a newer epoch than theirs here,
        those really lost.

        A newer epoch that the counter never issued (partition_owners deleted, or
        the store restored from a backup) is no other owner: the counter is moved
        past it and the partition claimed again.
        """
        if not newer:
            return set()
        issued = await self.ownership.counter()
        lost = {p for p, epoch in newer.items() if epoch <= issued}
        unrecorded = {p: epoch for p, epoch in newer.items() if epoch > issued}
        if unrecorded:
            log.warning("epochs %s were never issued here; claiming above them", unrecorded)
            await self.ownership.outrank(max(unrecorded.values()))
            for partition in unrecorded:
                await self.ownership.claim(partition)
        return lost

    async def claimed_elsewhere(self, partitions: Iterable[int]) -> set[int]:
        """Of these partitions, those a newer claim in partition_owners holds.

        Asked before writing what cannot be fenced document by document (alerts and
        their notifications): a worker that stalled past its session timeout then
        learns it lost the partition before it records anything.
        """
        held = {p: e for p in partitions if (e := self.ownership.epoch(p)) is not None}
        return await self.ownership.newer_claims(held)

    def release(self, partitions: Iterable[int]) -> None:
        """Give up partitions a newer owner holds (their records are the new owner's)."""
        self.ownership.release(partitions)
