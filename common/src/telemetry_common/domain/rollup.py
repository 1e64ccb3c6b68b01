"""One rollup bucket's statistics and how two of them merge; shared by the writer and the readers.

count, min, max, the sum (exact, see :mod:`telemetry_common.domain.exact_sum`) and the
percentile sketch merge exactly, so a bucket does not depend on how its readings
were split into batches or in what order they came. The standard deviation is
merged with Chan et al.'s parallel formula on (mean, M2), which is accurate
where a running sum of squares would cancel catastrophically, but only to
rounding. first/last are the values of the earliest and latest reading by
reading time; a tie in time goes to the smaller value for first and the larger
for last, so it does not depend on arrival order either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from telemetry_common.domain.exact_sum import add_exact, exact_partials, rounded
from telemetry_common.domain.sketch import PERCENTILES, QuantileSketch, bin_key, bin_value


def _earlier(ts: datetime, value: float, than_ts: datetime | None, than: float | None) -> bool:
    return than_ts is None or (ts, value) < (than_ts, than)


def _later(ts: datetime, value: float, than_ts: datetime | None, than: float | None) -> bool:
    return than_ts is None or (ts, value) > (than_ts, than)


@dataclass(slots=True)
class Rollup:
    count: int = 0
    sum_partials: list[float] = field(default_factory=lambda: [0.0])
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0
    first: float | None = None
    first_ts: datetime | None = None
    last: float | None = None
    last_ts: datetime | None = None
    sketch: QuantileSketch = field(default_factory=QuantileSketch)

    def add(self, value: float, ts: datetime, key: int | None = None) -> None:
        """Fold one value; ``key`` is its sketch bin when the caller computed it already."""
        self.count += 1
        add_exact(self.sum_partials, value)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        if _earlier(ts, value, self.first_ts, self.first):
            self.first, self.first_ts = value, ts
        if _later(ts, value, self.last_ts, self.last):
            self.last, self.last_ts = value, ts
        self.sketch.add_key(bin_key(value) if key is None else key)

    def merge(self, other: Rollup) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max = other.min, other.max
            self.sum_partials = list(other.sum_partials)
            self.first, self.first_ts = other.first, other.first_ts
            self.last, self.last_ts = other.last, other.last_ts
            self.sketch = QuantileSketch(dict(other.sketch.bins))
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.mean += delta * other.count / total
        self.count = total
        self.sum_partials = exact_partials(other.sum_partials, self.sum_partials)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        assert other.first_ts is not None and other.last_ts is not None
        assert other.first is not None and other.last is not None
        if _earlier(other.first_ts, other.first, self.first_ts, self.first):
            self.first, self.first_ts = other.first, other.first_ts
        if _later(other.last_ts, other.last, self.last_ts, self.last):
            self.last, self.last_ts = other.last, other.last_ts
        self.sketch.merge(other.sketch)

    @property
    def sum(self) -> float:
        return rounded(self.sum_partials)

    @property
    def average(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation of the bucket's values."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0

    def to_fields(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "average": self.average,
            "stddev": self.stddev,
            "first": self.first,
            "first_ts": self.first_ts,
            "last": self.last,
            "last_ts": self.last_ts,
            **self.sketch.quantiles(),
            # What merging needs beyond the public figures.
            "sum_partials": self.sum_partials,
            "mean": self.mean,
            "m2": self.m2,
            "sketch": self.sketch.to_document(),
        }

    @staticmethod
    def single_fields(value: float, ts: datetime, key: int) -> dict[str, Any]:
        """``to_fields`` of a rollup of ``value`` alone (``key`` its sketch bin), built directly.

        Most fine buckets hold one reading; this skips building the rollup.
        """
        # The exact sum of one finite value is the value itself (+ 0.0 turns -0.0
        # into 0.0, as exact_partials does).
        total = value + 0.0
        value_of_bin = bin_value(key)
        return {
            "count": 1,
            "sum": total,
            "min": value,
            "max": value,
            "average": total,
            "stddev": 0.0,
            "first": value,
            "first_ts": ts,
            "last": value,
            "last_ts": ts,
            **dict.fromkeys(PERCENTILES, value_of_bin),
            "sum_partials": [total],
            "mean": total,
            "m2": 0.0,
            "sketch": QuantileSketch.single_value_document(key),
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Rollup:
        if "count" not in doc and "value" in doc:
            # A bucket's only value, stored alone (telemetry_common.domain.rollup_layout).
            single = cls()
            single.add(float(doc["value"]), doc["ts"])
            return single
        count = int(doc.get("count", 0))
        if count == 0:
            return cls()
        total = float(doc["sum"])
        return cls(
            count=count,
            # Buckets written before exact sums carry only the rounded sum.
            sum_partials=[float(p) for p in doc.get("sum_partials", [total])],
            min=float(doc["min"]),
            max=float(doc["max"]),
            mean=float(doc.get("mean", total / count)),
            m2=float(doc.get("m2", 0.0)),
            first=doc.get("first"),
            first_ts=doc.get("first_ts"),
            last=doc.get("last"),
            last_ts=doc.get("last_ts"),
            sketch=QuantileSketch.from_document(doc.get("sketch")),
        )
