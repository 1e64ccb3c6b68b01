"""Where readings are folded: pure rollup arithmetic, no I/O.

A consumer batch becomes, per bucket (device, metric, resolution, bucket start),
the list of values it contributes, tagged with their Kafka partition and offset.
:func:`apply_new` then folds into a bucket only the contributions past the
bucket's per-partition offset watermark, which is what makes a replay of the
same records (after a crash, a rebalance or a manual reset) change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from telemetry_common.reading import Reading
from telemetry_common.resolutions import EPOCH, bucket_start
from telemetry_common.rollup import Rollup
from telemetry_common.sketch import bin_key
from telemetry_common.versioned import Watermarks


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
    # The value's sketch bin, computed once and shared by every resolution.
    key: int


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
        position, ts = (placed.partition, placed.offset), reading.ts
        contributions = [
            (metric, Contribution(*position, ts, value, bin_key(value)))
            for metric, value in reading.metrics.items()
        ]
        for resolution, width_s in resolutions.items():
            start = bucket_start(reading.ts, width_s)
            for metric, contribution in contributions:
                key = BucketKey(reading.device_id, metric, resolution, start)
                bucket = buckets.get(key)
                if bucket is None:
                    buckets[key] = [contribution]
                else:
                    bucket.append(contribution)
    return buckets


def apply_new(
    rollup: Rollup, watermarks: Watermarks, contributions: Iterable[Contribution]
) -> list[Contribution]:
    """Fold the contributions past the watermarks into ``rollup``; return those applied."""
    contributions = list(contributions)  # read twice below
    fresh = Rollup()
    applied = []
    for c in contributions:
        if watermarks.is_new(c.partition, c.offset):
            fresh.add(c.value, c.ts, c.key)
            applied.append(c)
    for c in contributions:
        watermarks.advance(c.partition, c.offset)
    rollup.merge(fresh)
    return applied
