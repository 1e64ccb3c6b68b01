"""Where readings are folded: the buckets and device summaries held in memory, no I/O.

The aggregator owns the partitions Kafka assigns it (see
:mod:`telemetry_common.infra.ownership`), so it folds each reading into state it keeps
between batches and writes that state without reading it back first. Each
metric of a bucket, and each device summary, keeps the highest offset it folded
per partition (its watermarks), which makes folding a replayed record a no-op:
after a crash, a rebalance, or when this worker first touches a bucket that is
already stored and merges with what the store holds (:meth:`BucketState.merge_stored`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from telemetry_common.domain.reading import Reading
from telemetry_common.domain.resolutions import EPOCH
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    bucket_document,
    bucket_id,
    scoped_id,
    stored_fields,
)
from telemetry_common.domain.sketch import bin_key


class BucketKey(NamedTuple):
    project_id: str
    device_id: str
    resolution: str
    start: datetime

    @property
    def doc_id(self) -> str:
        return bucket_id(self.project_id, self.device_id, self.resolution, self.start)


class Contribution(NamedTuple):
    partition: int
    offset: int
    ts: datetime
    value: float
    # The value's sketch bin, computed once and shared by every resolution.
    key: int


@dataclass(frozen=True, slots=True)
class PositionedReading:
    """A reading with the Kafka coordinates the watermarks are kept in."""

    partition: int
    offset: int
    reading: Reading


class BucketStarts:
    """Bucket starts by epoch second, each datetime made once per process and reused."""

    def __init__(self, resolutions: Mapping[str, int]):
        self._widths = list(resolutions.items())
        self._starts: dict[int, datetime] = {}

    def of(self, ts: datetime) -> Iterator[tuple[str, datetime]]:
        """(resolution, bucket start) of every resolution's bucket holding ``ts``."""
        seconds = int((ts - EPOCH).total_seconds() // 1)
        starts = self._starts
        for resolution, width_s in self._widths:
            offset = seconds // width_s * width_s
            start = starts.get(offset)
            if start is None:
                if len(starts) > 100_000:
                    starts.clear()  # bounded: a week of minutes, then start over
                start = starts[offset] = EPOCH + timedelta(seconds=offset)
            yield resolution, start


def contributions(placed: PositionedReading) -> list[tuple[str, Contribution]]:
    reading = placed.reading
    return [
        (metric, Contribution(placed.partition, placed.offset, reading.ts, value, bin_key(value)))
        for metric, value in reading.metrics.items()
    ]


@dataclass(slots=True)
class Merged:
    """(partition, offset) of what a merge with a stored document found held already, and
    of what it still had to add."""

    held: list[tuple[int, int]] = field(default_factory=list)
    added: list[tuple[int, int]] = field(default_factory=list)
    # Metric values of the readings held (a bucket holds one per metric of a reading).
    values_held: int = 0


Values = list[tuple[str, Contribution]]


@dataclass(slots=True)
class BucketState:
    """One bucket, every metric, as this worker knows it.

    ``applied`` is the highest offset folded per partition. All metrics of a
    reading are folded together, so one watermark serves them all; only a bucket
    migrated from the layout before, whose metrics could lag one another after a
    crash, carries a watermark per metric for a while (``metric_applied``).

    ``stored`` says the store holds the bucket as of this worker's last write or
    read, so writing it means replacing it. Until then (a bucket this worker
    created) it is inserted, and ``pending`` keeps what was folded so that, if
    the insert finds the bucket stored after all (written before a restart or
    by the partition's previous owner), the stored bucket plus these gives the
    truth.
    """

    key: BucketKey
    partition: int
    # A metric's only value so far stays the contribution itself: most fine
    # buckets never get a second, and a Rollup (with its sketch and sum partials)
    # per value was most of the worker's memory (BENCHMARKS.md, design choices).
    metrics: dict[str, Rollup | Contribution] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    metric_applied: dict[str, dict[int, int]] | None = None
    stored: bool = False
    dirty: bool = False
    pending: list[tuple[int, int, Values]] = field(default_factory=list)

    def fold(self, partition: int, offset: int, values: Values) -> bool:
        """Fold one reading's values; False if the bucket holds them already."""
        if self.metric_applied:
            added = self._fold_each(partition, offset, values)
        else:
            if offset <= self.applied.get(partition, -1):
                return False
            self.applied[partition] = offset
            metrics = self.metrics
            for metric, c in values:
                held = metrics.get(metric)
                if held is None:
                    metrics[metric] = c
                elif isinstance(held, Contribution):
                    metrics[metric] = _rollup_of(held, c)
                else:
                    held.add(c.value, c.ts, c.key)
            added = True
        if added:
            self.dirty = True
            if not self.stored:
                self.pending.append((partition, offset, values))
        return added

    def _fold_each(self, partition: int, offset: int, values: Values) -> bool:
        assert self.metric_applied is not None
        added = False
        for metric, c in values:
            own = self.metric_applied.get(metric)
            marks = self.applied if own is None else own
            if offset <= marks.get(partition, -1):
                continue
            marks[partition] = offset
            held = self.metrics.get(metric)
            if held is None:
                self.metrics[metric] = c
            elif isinstance(held, Contribution):
                self.metrics[metric] = _rollup_of(held, c)
            else:
                held.add(c.value, c.ts, c.key)
            added = True
        # A lagging metric that caught up with the others needs no watermark of its own.
        for metric, own in list(self.metric_applied.items()):
            if own == self.applied:
                del self.metric_applied[metric]
        return added

    def rollup(self, metric: str) -> Rollup:
        """The metric's figures so far."""
        held = self.metrics[metric]
        if isinstance(held, Contribution):
            single = Rollup()
            single.add(held.value, held.ts, held.key)
            return single
        return held

    def merge_stored(self, doc: Mapping[str, Any]) -> Merged:
        """Start from the stored bucket and fold again what this worker added that it
        lacks; return the positions of the values it held already, and of the others."""
        self.applied = _int_keys(doc.get("_applied", {}))
        self.metrics = {}
        self.metric_applied = None
        for metric, fields in doc.get("metrics", {}).items():
            self.metrics[metric] = Rollup.from_fields(fields)
            if "_applied" in fields:
                own = _int_keys(fields["_applied"])
                if own != self.applied:
                    self.metric_applied = self.metric_applied or {}
                    self.metric_applied[metric] = own
        pending, self.pending = self.pending, []
        self.stored = True
        self.dirty = False
        merged = Merged()
        for partition, offset, values in pending:
            if self.fold(partition, offset, values):
                merged.added.append((partition, offset))
            else:
                merged.held.append((partition, offset))
                merged.values_held += len(values)
        return merged

    def document(
        self,
        epoch: int,
        now: datetime,
        keep_for: timedelta | None,
        windows: Mapping[str, datetime] | None = None,
    ) -> dict[str, Any]:
        metrics = {}
        for metric, held in self.metrics.items():
            if isinstance(held, Contribution):
                fields: dict[str, Any] = {"value": held.value, "ts": held.ts}
            else:
                fields = stored_fields(held)
            own = self.metric_applied.get(metric) if self.metric_applied else None
            if own is not None:
                # This metric lags the others (a bucket migrated mid-replay): its
                # own watermarks keep a replay from skipping what it lacks.
                fields["_applied"] = _str_keys(own)
            metrics[metric] = fields
        key = self.key
        return bucket_document(
            project_id=key.project_id,
            device_id=key.device_id,
            resolution=key.resolution,
            start=key.start,
            metrics=metrics,
            applied=_str_keys(self.applied),
            epoch=epoch,
            now=now,
            keep_for=keep_for,
            windows=windows,
        )


def _rollup_of(first: Contribution, second: Contribution) -> Rollup:
    rollup = Rollup()
    rollup.add(first.value, first.ts, first.key)
    rollup.add(second.value, second.ts, second.key)
    return rollup


def _int_keys(marks: Mapping[str, int]) -> dict[int, int]:
    # BSON keys are strings; in memory a partition is an int, compared per reading.
    return {int(p): int(o) for p, o in marks.items()}


def _str_keys(marks: Mapping[int, int]) -> dict[str, int]:
    return {str(p): o for p, o in marks.items()}


# Fields of a device document that are the writer's bookkeeping, not the summary.
_DEVICE_BOOKKEEPING = ("_id", "_applied", "_e", "_v", "updated_at")


@dataclass(slots=True)
class DeviceState:
    """A device's summary (first/last seen, count, last values, tags, location)."""

    device_id: str
    partition: int
    project_id: str = DEFAULT_PROJECT
    summary: dict[str, Any] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    stored: bool = False
    dirty: bool = False
    pending: list[PositionedReading] = field(default_factory=list)

    def fold(self, placed: PositionedReading) -> bool:
        if placed.offset <= self.applied.get(placed.partition, -1):
            return False
        self.applied[placed.partition] = placed.offset
        fold_into_summary(self.summary, placed.reading)
        self.dirty = True
        if not self.stored:
            self.pending.append(placed)
        return True

    def merge_stored(self, doc: Mapping[str, Any]) -> Merged:
        self.summary = {k: v for k, v in doc.items() if k not in _DEVICE_BOOKKEEPING}
        self.applied = _int_keys(doc.get("_applied", {}))
        pending, self.pending = self.pending, []
        self.stored = True
        self.dirty = False
        merged = Merged()
        for placed in pending:
            added = self.fold(placed)
            (merged.added if added else merged.held).append((placed.partition, placed.offset))
        return merged

    def document(self, epoch: int, now: datetime) -> dict[str, Any]:
        return {
            **self.summary,
            "_id": scoped_id(self.project_id, self.device_id),
            "project_id": self.project_id,
            "updated_at": now,
            "_applied": _str_keys(self.applied),
            "_e": epoch,
        }


def fold_into_summary(doc: dict[str, Any], reading: Reading) -> None:
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
