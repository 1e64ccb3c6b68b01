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
from datetime import datetime, timedelta
from typing import NamedTuple

from telemetry_common.reading import Reading
from telemetry_common.resolutions import EPOCH
from telemetry_common.rollup import Rollup
from telemetry_common.sketch import bin_key
from telemetry_common.versioned import Watermarks


# Named tuples rather than frozen dataclasses: a batch makes ten of each per
# reading, and a tuple is built and hashed several times faster.
class BucketKey(NamedTuple):
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


class Contribution(NamedTuple):
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
    widths = list(resolutions.items())
    starts: dict[int, datetime] = {}  # bucket starts, by epoch second, made once
    for placed in batch:
        reading = placed.reading
        position, ts = (placed.partition, placed.offset), reading.ts
        contributions = [
            (metric, Contribution(*position, ts, value, bin_key(value)))
            for metric, value in reading.metrics.items()
        ]
        seconds = int((ts - EPOCH).total_seconds() // 1)
        for resolution, width_s in widths:
            offset = seconds // width_s * width_s
            start = starts.get(offset)
            if start is None:
                start = starts[offset] = EPOCH + timedelta(seconds=offset)
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
    if rollup.count == 0:
        # Nothing to merge with: adding straight in gives the same rollup.
        fresh = rollup
    else:
        fresh = Rollup()
    applied = []
    for c in contributions:
        if watermarks.is_new(c.partition, c.offset):
            fresh.add(c.value, c.ts, c.key)
            applied.append(c)
    for c in contributions:
        watermarks.advance(c.partition, c.offset)
    if fresh is not rollup:
        rollup.merge(fresh)
    return applied
