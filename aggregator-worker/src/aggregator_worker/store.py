"""Where folded readings are written: raw readings, rollup buckets and device summaries.

Every write is idempotent so the consumer can commit after it and replay safely:

* raw readings are inserted with ``_id`` = event_id and the Kafka position that
  carried them (``_src``), so a second copy of an event (a device retry) is told
  apart from a replay of the same record after a crash;
* buckets and device summaries keep per-partition offset watermarks and are
  replaced only if nobody changed them since they were read (a version check),
  so a replayed offset is never folded twice, even across a rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.mongo import DEVICES, RAW, ROLLUPS
from telemetry_common.reading import Reading
from telemetry_common.rollup import Rollup
from telemetry_common.timefmt import utcnow
from telemetry_common.versioned import (
    Watermarks,
    insert_first_copies,
    replace_versioned,
    source,
)

from aggregator_worker.fold import (
    BucketKey,
    Contribution,
    Placed,
    apply_new,
)

log = logging.getLogger(__name__)

# Version conflicts only happen while two consumers briefly own one partition
# during a rebalance; a handful of rereads settles them.
MAX_CONFLICT_ROUNDS = 5


class WriteConflict(RuntimeError):
    """A bucket kept changing under us; the batch is retried from the top."""


def raw_document(placed: Placed) -> dict[str, Any]:
    r = placed.reading
    doc: dict[str, Any] = {
        "_id": r.event_id,
        "device_id": r.device_id,
        "ts": r.ts,
        "received_at": r.received_at,
        "metrics": r.metrics,
        "tags": list(r.tags),
        "_src": source(placed.partition, placed.offset),
    }
    if r.lat is not None:
        doc["lat"] = r.lat
    if r.lon is not None:
        doc["lon"] = r.lon
    return doc


@dataclass
class RawInsertResult:
    to_fold: list[Placed]
    duplicates: int


async def insert_raw(db: AsyncDatabase, batch: list[Placed]) -> RawInsertResult:
    """Store each reading once; return those whose rollups this batch is responsible for."""
    unique: dict[str, Placed] = {}
    for placed in batch:
        unique.setdefault(placed.reading.event_id, placed)
    retried = await insert_first_copies(db[RAW], [raw_document(p) for p in unique.values()])
    to_fold = [p for p in unique.values() if p.reading.event_id not in retried]
    return RawInsertResult(to_fold=to_fold, duplicates=len(batch) - len(to_fold))


def rollup_document(
    key: BucketKey,
    rollup: Rollup,
    watermarks: Watermarks,
    version: int,
    now: datetime,
    keep_for: timedelta | None,
) -> dict[str, Any]:
    doc = {
        "_id": key.doc_id,
        "device_id": key.device_id,
        "sensor_type": key.sensor_type,
        "resolution": key.resolution,
        "timestamp": key.start,
        **rollup.to_fields(),
        "updated_at": now,
        "_applied": watermarks.by_partition,
        "_v": version,
    }
    if keep_for is not None:
        # A TTL index with expireAfterSeconds=0 on expire_at lets each resolution
        # keep its own retention in one collection; counted from the last write.
        doc["expire_at"] = now + keep_for
    return doc


@dataclass
class RollupWrites:
    """What one batch did to the rollup buckets, for the metrics."""

    by_resolution: dict[str, int] = field(default_factory=dict)
    values_skipped: int = 0
    # (partition, offset) of every reading that added to at least one bucket.
    applied: set[tuple[int, int]] = field(default_factory=set)


async def write_rollups(
    db: AsyncDatabase,
    buckets: Mapping[BucketKey, list[Contribution]],
    retention: Mapping[str, timedelta | None],
) -> RollupWrites:
    """Fold new contributions into each stored bucket: one read and one bulk write per round."""
    pending = dict(buckets)
    result = RollupWrites()
    for _ in range(MAX_CONFLICT_ROUNDS):
        by_id = {key.doc_id: key for key in pending}
        stored = {doc["_id"]: doc async for doc in db[ROLLUPS].find({"_id": {"$in": list(by_id)}})}
        now = utcnow()
        replacements: list[tuple[dict[str, Any], int | None]] = []
        skipped: dict[str, int] = {}
        applied: dict[str, list[Contribution]] = {}
        for doc_id, key in by_id.items():
            current = stored.get(doc_id)
            rollup = Rollup.from_fields(current) if current else Rollup()
            watermarks = Watermarks(dict(current.get("_applied", {})) if current else {})
            contributions = pending[key]
            new = apply_new(rollup, watermarks, contributions)
            skipped[doc_id] = len(contributions) - len(new)
            if not new:
                continue
            applied[doc_id] = new
            version = current.get("_v") if current else None
            doc = rollup_document(
                key, rollup, watermarks, (version or 0) + 1, now, retention.get(key.resolution)
            )
            replacements.append((doc, version))
        conflicts = await replace_versioned(db[ROLLUPS], replacements)
        # A conflicting bucket is read and counted again in the next round.
        result.values_skipped += sum(n for i, n in skipped.items() if i not in conflicts)
        for doc_id, contributions in applied.items():
            if doc_id not in conflicts:
                result.applied.update((c.partition, c.offset) for c in contributions)
        for doc, _ in replacements:
            if doc["_id"] not in conflicts:
                resolution = doc["resolution"]
                result.by_resolution[resolution] = result.by_resolution.get(resolution, 0) + 1
        if not conflicts:
            return result
        pending = {key: pending[key] for key in pending if key.doc_id in conflicts}
    raise WriteConflict(f"{len(pending)} buckets kept changing during the write")


def _device_update(
    current: Mapping[str, Any] | None, placed_readings: Iterable[Placed]
) -> tuple[dict[str, Any], int] | None:
    watermarks = Watermarks(dict(current.get("_applied", {})) if current else {})
    doc: dict[str, Any] = dict(current) if current else {}
    new = 0
    for placed in placed_readings:
        if not watermarks.is_new(placed.partition, placed.offset):
            continue
        watermarks.advance(placed.partition, placed.offset)
        new += 1
        _fold_into_device(doc, placed.reading)
    if new == 0:
        return None
    doc["_applied"] = watermarks.by_partition
    return doc, new


def _fold_into_device(doc: dict[str, Any], reading: Reading) -> None:
    doc.setdefault("device_id", reading.device_id)
    doc["reading_count"] = doc.get("reading_count", 0) + 1
    if "first_seen" not in doc or reading.ts < doc["first_seen"]:
        doc["first_seen"] = reading.ts
    if "last_seen" not in doc or reading.ts >= doc["last_seen"]:
        doc["last_seen"] = reading.ts
        if reading.lat is not None and reading.lon is not None:
            doc["location"] = {"lat": reading.lat, "lon": reading.lon}
        if reading.tags:
            doc["tags"] = list(reading.tags)
    # Last value per metric by reading time, so a late reading never overwrites
    # a newer value.
    last_values = doc.setdefault("last_values", {})
    last_value_ts = doc.setdefault("last_value_ts", {})
    for metric, value in reading.metrics.items():
        if metric not in last_value_ts or reading.ts >= last_value_ts[metric]:
            last_values[metric] = value
            last_value_ts[metric] = reading.ts
    if "last_received_at" not in doc or reading.received_at > doc["last_received_at"]:
        doc["last_received_at"] = reading.received_at


async def write_devices(db: AsyncDatabase, batch: list[Placed]) -> int:
    by_device: dict[str, list[Placed]] = {}
    for placed in batch:
        by_device.setdefault(placed.reading.device_id, []).append(placed)
    pending = set(by_device)
    writes = 0
    for _ in range(MAX_CONFLICT_ROUNDS):
        stored = {
            doc["_id"]: doc async for doc in db[DEVICES].find({"_id": {"$in": list(pending)}})
        }
        replacements: list[tuple[dict[str, Any], int | None]] = []
        for device_id in pending:
            current = stored.get(device_id)
            update = _device_update(current, by_device[device_id])
            if update is None:
                continue
            doc, _ = update
            version = current.get("_v") if current else None
            doc.update({"_id": device_id, "_v": (version or 0) + 1, "updated_at": utcnow()})
            replacements.append((doc, version))
        conflicts = await replace_versioned(db[DEVICES], replacements)
        writes += len(replacements) - len(conflicts)
        if not conflicts:
            return writes
        pending = conflicts
    raise WriteConflict(f"{len(pending)} devices kept changing during the write")
