"""Where readings are folded: pure rollup arithmetic, no I/O.

A consumer batch becomes, per bucket (device, metric, resolution, bucket start),
the list of values it contributes, tagged with their Kafka partition and offset.
:func:`apply_new` then folds into a bucket only the contributions past the
bucket's per-partition offset watermark, which is what makes a replay of the
same records (after a crash, a rebalance or a manual reset) change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from telemetry_common.reading import Reading

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(ts: datetime, width_s: int) -> datetime:
    offset = int((ts - EPOCH).total_seconds() // width_s) * width_s
    return EPOCH + timedelta(seconds=offset)


@dataclass(frozen=True, slots=True)
class BucketKey:
    device_id: str
    sensor_type: str
    resolution: str
    start: datetime

    @property
    def doc_id(self) -> str:
        # `|` never occurs in a device id or a metric name, so the id is unambiguous.
        return (
            f"{self.device_id}|{self.sensor_type}|{self.resolution}|"
            f"{int((self.start - EPOCH).total_seconds())}"
        )


@dataclass(frozen=True, slots=True)
class Contribution:
    partition: int
    offset: int
    ts: datetime
    value: float


@dataclass(slots=True)
class Rollup:
    """Count, sum, min, max, mean and M2 (for the standard deviation), first and last by time.

    M2 is merged with Chan et al.'s parallel formula, which stays accurate where
    a running sum of squares would cancel catastrophically.
    """

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0
    first: float | None = None
    first_ts: datetime | None = None
    last: float | None = None
    last_ts: datetime | None = None

    def add(self, value: float, ts: datetime) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        if self.first_ts is None or ts < self.first_ts:
            self.first, self.first_ts = value, ts
        if self.last_ts is None or ts >= self.last_ts:
            self.last, self.last_ts = value, ts

    def merge(self, other: Rollup) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            for name in Rollup.__slots__:
                setattr(self, name, getattr(other, name))
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.mean += delta * other.count / total
        self.count = total
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        assert other.first_ts is not None and other.last_ts is not None
        if self.first_ts is None or other.first_ts < self.first_ts:
            self.first, self.first_ts = other.first, other.first_ts
        if self.last_ts is None or other.last_ts >= self.last_ts:
            self.last, self.last_ts = other.last, other.last_ts

    @property
    def average(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation of the bucket's values."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0

    def to_fields(self) -> dict[str, object]:
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "average": self.average,
            "stddev": self.stddev,
            "m2": self.m2,
            "first": self.first,
            "first_ts": self.first_ts,
            "last": self.last,
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, object]) -> Rollup:
        count = int(doc.get("count", 0))  # type: ignore[arg-type]
        if count == 0:
            return cls()
        total = float(doc["sum"])  # type: ignore[arg-type]
        return cls(
            count=count,
            sum=total,
            min=float(doc["min"]),  # type: ignore[arg-type]
            max=float(doc["max"]),  # type: ignore[arg-type]
            mean=total / count,
            m2=float(doc.get("m2", 0.0)),  # type: ignore[arg-type]
            first=doc.get("first"),  # type: ignore[arg-type]
            first_ts=doc.get("first_ts"),  # type: ignore[arg-type]
            last=doc.get("last"),  # type: ignore[arg-type]
            last_ts=doc.get("last_ts"),  # type: ignore[arg-type]
        )


@dataclass(frozen=True, slots=True)
class Placed:
    """A reading with the Kafka coordinates the watermarks are kept in."""

    partition: int
    offset: int
    reading: Reading


def fold_batch(
    batch: Iterable[Placed], resolutions: Mapping[str, int]
) -> dict[BucketKey, list[Contribution]]:
    """Group every metric value of every reading under each bucket it belongs to."""
    buckets: dict[BucketKey, list[Contribution]] = {}
    for placed in batch:
        reading = placed.reading
        for resolution, width_s in resolutions.items():
            start = bucket_start(reading.ts, width_s)
            for metric, value in reading.metrics.items():
                key = BucketKey(reading.device_id, metric, resolution, start)
                buckets.setdefault(key, []).append(
                    Contribution(placed.partition, placed.offset, reading.ts, value)
                )
    return buckets


@dataclass(slots=True)
class Watermarks:
    """Highest offset applied per partition, as stored beside each bucket or device."""

    by_partition: dict[str, int] = field(default_factory=dict)

    def is_new(self, partition: int, offset: int) -> bool:
        return offset > self.by_partition.get(str(partition), -1)

    def advance(self, partition: int, offset: int) -> None:
        key = str(partition)
        self.by_partition[key] = max(self.by_partition.get(key, -1), offset)


def apply_new(rollup: Rollup, watermarks: Watermarks, contributions: Iterable[Contribution]) -> int:
    """Fold the contributions past the watermarks into ``rollup``; return how many were new."""
    contributions = list(contributions)  # read twice below
    applied = 0
    fresh = Rollup()
    for c in contributions:
        if watermarks.is_new(c.partition, c.offset):
            fresh.add(c.value, c.ts)
            applied += 1
    for c in contributions:
        watermarks.advance(c.partition, c.offset)
    rollup.merge(fresh)
    return applied
