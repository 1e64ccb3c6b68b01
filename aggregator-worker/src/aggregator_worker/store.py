"""Where folded readings are written: raw readings, rollup buckets and device summaries.

Raw readings are inserted with ``_id`` = event_id (within its project, see
``scoped_id``) and the Kafka position that carried them (``_src``), so a second
copy of an event (a device retry) is told apart from a replay of the same
record after a crash, and counted once.

Buckets and device summaries live in memory for the partitions this worker
owns (:class:`PartitionState`) and are written without being read: a bucket
this worker created is inserted, one it wrote before is replaced, guarded by
the partition's epoch so that a worker that lost the partition cannot
overwrite the new owner (:mod:`telemetry_common.infra.ownership`). Only when an
insert finds the bucket stored already is it read, once, and merged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar

from telemetry_common.domain.resolutions import RollupPlan
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, ROLLUPS, scoped_id, windows_of
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.mongo import DEVICES, RAW, Database
from telemetry_common.infra.ownership import OwnedPartitions, PartitionOwnership, PartitionsLost
from telemetry_common.infra.versioned import (
    find_by_id,
    insert_first_copies,
    source_position,
    write_fenced,
)

from aggregator_worker.fold import (
    BucketKey,
    BucketStarts,
    BucketState,
    DeviceState,
    Merged,
    PositionedReading,
    contributions,
)

log = logging.getLogger(__name__)

# An insert that finds a bucket stored leads to one read and a replace; a bucket
# can only be found stored again if yet another owner wrote it in between.
MAX_ROUNDS = 5
# Readings folded between two yields to the event loop.
FOLD_SLICE = 1000


def raw_document(placed: PositionedReading) -> dict[str, Any]:
    r = placed.reading
    doc: dict[str, Any] = {
        "_id": scoped_id(r.project_id, r.event_id),
        "project_id": r.project_id,
        "device_id": r.device_id,
        "ts": r.ts,
        "received_at": r.received_at,
        "metrics": r.metrics,
        "tags": list(r.tags),
        "_src": source_position(placed.partition, placed.offset),
    }
    if r.project_id != DEFAULT_PROJECT:
        doc["event_id"] = r.event_id  # the _id carries the project too
    if r.lat is not None:
        doc["lat"] = r.lat
    if r.lon is not None:
        doc["lon"] = r.lon
    return doc


@dataclass
class RawInsertResult:
    to_fold: list[PositionedReading]
    duplicates: int


async def insert_raw(db: Database, batch: list[PositionedReading]) -> RawInsertResult:
    """Store each reading once; return those whose rollups this batch is responsible for."""
    unique: dict[str, PositionedReading] = {}
    for placed in batch:
        unique.setdefault(scoped_id(placed.reading.project_id, placed.reading.event_id), placed)
    retried = await insert_first_copies(db[RAW], (raw_document(p) for p in unique.values()))
    to_fold = [p for raw_id, p in unique.items() if raw_id not in retried]
    return RawInsertResult(to_fold=to_fold, duplicates=len(batch) - len(to_fold))


class _State(Protocol):
    partition: int
    stored: bool
    dirty: bool
    # What was folded since the last write, folded again if the write finds the
    # document stored after all (a bucket's values, a device's readings).
    pending: list[Any]

    def merge_stored(self, doc: Mapping[str, Any]) -> Merged: ...


S = TypeVar("S", bound=_State)


class Held(Generic[S]):
    """States by document id, least recently folded first, at most ``limit`` kept clean."""

    def __init__(self, limit: int):
        self.limit = limit
        self.by_id: OrderedDict[str, S] = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_id)

    def touch(self, doc_id: str, state: S) -> None:
        self.by_id[doc_id] = state
        self.by_id.move_to_end(doc_id)

    def dirty(self) -> list[tuple[str, S]]:
        return [(doc_id, s) for doc_id, s in self.by_id.items() if s.dirty]

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        for doc_id in [i for i, s in self.by_id.items() if s.partition in gone]:
            del self.by_id[doc_id]

    def evict(self) -> None:
        """Let go of the least recently folded clean states (a closed bucket is never
        folded again, so it goes first); one needed again is merged from the store."""
        by_id = self.by_id
        while len(by_id) > self.limit:
            doc_id, state = next(iter(by_id.items()))
            if state.dirty:
                break
            del by_id[doc_id]


@dataclass
class FlushOutcome:
    """What one batch did, for the metrics."""

    bucket_writes: dict[str, int] = field(default_factory=dict)
    device_writes: int = 0
    # Values a stored bucket already held when this worker merged with it (replays).
    values_held: int = 0
    merged_from_store: int = 0
    # Positions of readings a merge found held, and of those it still added.
    held: set[tuple[int, int]] = field(default_factory=set)
    added: set[tuple[int, int]] = field(default_factory=set)

    def replayed(self, folded: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Of the readings ``folded`` in memory, those every stored document already held."""
        return folded & (self.held - self.added)


class PartitionState:
    """The buckets and device summaries of the partitions this worker owns."""

    def __init__(
        self,
        db: Database,
        ownership: PartitionOwnership,
        plan: RollupPlan,
        retention: Mapping[str, timedelta | None],
        bucket_limit: int,
        device_limit: int,
    ):
        """``retention``: how long each stored resolution is kept (RollupPlan.stored_retention)."""
        self._db = db
        self._owned = OwnedPartitions(ownership)
        self._starts = BucketStarts(plan.stored)
        self._widths = {name: timedelta(seconds=width) for name, width in plan.stored.items()}
        self._merged = {name: plan.derived_from(name) for name in plan.stored}
        self._retention = retention
        self.buckets: Held[BucketState] = Held(bucket_limit)
        self.devices: Held[DeviceState] = Held(device_limit)

    # --- partitions come and go -------------------------------------------------------

    async def partitions_assigned(self, partitions: set[int]) -> None:
        """Claim each partition; keep its state only if nobody held it in between."""
        self._forget_all_but(await self._owned.assign(partitions))

    async def partitions_revoked(self, partitions: set[int]) -> None:
        self._owned.revoke(partitions)

    def _forget_all_but(self, kept: set[int]) -> None:
        held = {s.partition for s in self.buckets.by_id.values()}
        held |= {s.partition for s in self.devices.by_id.values()}
        self.forget(held - kept)

    def forget(self, partitions: Iterable[int]) -> None:
        partitions = set(partitions)
        self.buckets.forget_partitions(partitions)
        self.devices.forget_partitions(partitions)

    # --- a batch ----------------------------------------------------------------------

    async def fold(self, batch: list[PositionedReading]) -> set[tuple[int, int]]:
        """Fold readings into held state; return the positions of those that added to it."""
        buckets, devices = self.buckets, self.devices
        added: set[tuple[int, int]] = set()
        for i, placed in enumerate(batch):
            if i % FOLD_SLICE == FOLD_SLICE - 1:
                # Let the consumer heartbeat and the HTTP side answer during a long batch.
                await asyncio.sleep(0)
            reading, partition, offset = placed.reading, placed.partition, placed.offset
            values = contributions(placed)
            any_new = False
            project_id = reading.project_id
            for resolution, start in self._starts.of(reading.ts):
                key = BucketKey(project_id, reading.device_id, resolution, start)
                doc_id = key.doc_id
                state = buckets.by_id.get(doc_id)
                if state is None:
                    state = BucketState(key, partition)
                buckets.touch(doc_id, state)
                any_new |= state.fold(partition, offset, values)
            device_key = scoped_id(project_id, reading.device_id)
            device = devices.by_id.get(device_key)
            if device is None:
                device = DeviceState(reading.device_id, partition, project_id)
            devices.touch(device_key, device)
            any_new |= device.fold(placed)
            if any_new:
                added.add((partition, offset))
        return added

    async def flush(self) -> FlushOutcome:
        """Write every changed bucket and summary; raise PartitionsLost for partitions a
        newer owner holds (after writing the others)."""
        outcome = FlushOutcome()
        now = utcnow()
        lost: set[int] = set()

        def bucket_doc(doc_id: str, state: BucketState, epoch: int) -> dict[str, Any]:
            outcome.bucket_writes[state.key.resolution] = (
                outcome.bucket_writes.get(state.key.resolution, 0) + 1
            )
            key = state.key
            windows = windows_of(key.start, self._merged[key.resolution])
            return state.document(epoch, now, self._retention.get(key.resolution), windows)

        def device_doc(doc_id: str, state: DeviceState, epoch: int) -> dict[str, Any]:
            outcome.device_writes += 1
            return state.document(epoch, now)

        lost |= await self._write(ROLLUPS, self.buckets, bucket_doc, outcome)
        lost |= await self._write(DEVICES, self.devices, device_doc, outcome)
        self._let_go_of_closed_buckets()
        self.buckets.evict()
        self.devices.evict()
        if lost:
            self.forget(lost)
            self._owned.release(lost)
            raise PartitionsLost(lost)
        return outcome

    def _let_go_of_closed_buckets(self) -> None:
        """Let go of written buckets that end before their device's newest reading.

        Devices report in time order, so such a bucket is folded again only by a
        late reading, which merges it back from the store. Most fine buckets hold
        one reading and would otherwise fill memory for nothing.
        """
        devices, widths = self.devices.by_id, self._widths
        by_id = self.buckets.by_id
        closed = []
        for doc_id, state in by_id.items():
            if state.dirty:
                continue
            key = state.key
            device = devices.get(scoped_id(key.project_id, key.device_id))
            newest = device.summary.get("last_seen") if device is not None else None
            if newest is None or key.start + widths[key.resolution] <= newest:
                closed.append(doc_id)
        for doc_id in closed:
            del by_id[doc_id]

    async def _write(
        self,
        collection: str,
        held: Held[S],
        build: Callable[[str, S, int], dict[str, Any]],
        outcome: FlushOutcome,
    ) -> set[int]:
        lost: set[int] = set()
        for _ in range(MAX_ROUNDS):
            dirty = [(i, s) for i, s in held.dirty() if s.partition not in lost]
            if not dirty:
                return lost
            epochs, revoked = await self._owned.epochs({s.partition for _, s in dirty})
            if revoked:
                lost |= revoked
                dirty = [(i, s) for i, s in dirty if s.partition not in revoked]
            new = [(i, s) for i, s in dirty if not s.stored]
            replaced = [(i, s) for i, s in dirty if s.stored]

            def document(item: tuple[str, S], epochs: dict[int, int] = epochs) -> dict[str, Any]:
                doc_id, state = item
                return build(doc_id, state, epochs[state.partition])

            result = await write_fenced(self._db[collection], new, replaced, document, _epoch_of)
            states = dict(dirty)
            for doc_id, state in dirty:
                if doc_id not in result.existing and doc_id not in result.fenced:
                    state.stored, state.dirty = True, False
                    state.pending.clear()
            to_read = list(result.existing | result.fenced)
            stored = await find_by_id(self._db[collection], to_read) if to_read else {}
            newer = {
                states[i].partition: doc["_e"]
                for i, doc in stored.items()
                if doc.get("_e", 0) > epochs[states[i].partition]
            }
            lost |= await self._owned.lost_or_reclaimed(newer)
            for doc_id in result.existing:
                state = states[doc_id]
                doc = stored.get(doc_id)
                if doc is None or state.partition in lost:
                    # None: gone since the insert failed (expired), inserted next round.
                    continue
                merged = state.merge_stored(doc)
                outcome.merged_from_store += 1
                outcome.values_held += merged.values_held
                outcome.held.update(merged.held)
                outcome.added.update(merged.added)
            # A refused replace of a partition claimed again above an unrecorded
            # epoch stays dirty and is replaced under the new epoch next round.
        raise RuntimeError(f"{collection}: documents kept changing during {MAX_ROUNDS} rounds")


def _epoch_of(doc: dict[str, Any]) -> int:
    return int(doc["_e"])
