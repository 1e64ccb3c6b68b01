"""A mergeable quantile sketch for rollup percentiles: DDSketch bins, stored as plain counts.

The value-to-bin mapping is the `ddsketch` library's ``LogarithmicMapping``
(Masson, Rim and Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", VLDB 2019). With relative accuracy ``alpha`` every
quantile it reports is within ``alpha`` (relative) of the exact value at rank
``floor(q * (n - 1))`` of the sorted values; quantiles use the same rank rule
as the library's ``DDSketch.get_quantile_value``.

The bins are integer counts keyed by bin index, so merging is adding counts:
exact, commutative and associative, whatever the batch split or order. They
are kept in dicts rather than the library's dense float store because a bucket
is read from and written back to MongoDB on every batch, and a dict of a few
dozen int counts crosses BSON with no conversion step.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def bin_key(value: float) -> int:
    """The signed bin of ``value``: positive keys count up from 1, negatives mirror, 0 is zero.

    Both of the library's stores are packed into one signed key space so a
    contribution carries a single int, computed once and reused at every resolution.
    """
    if value > MAPPING.min_possible:
        return _POSITIVE_BASE + MAPPING.key(value)
    if value < -MAPPING.min_possible:
        return -(_POSITIVE_BASE + MAPPING.key(-value))
    return 0


# Library keys are bounded by the float range (about +-36,000 at 1%); shifting by
# more than that keeps every positive key above 0 and every negative one below.
_POSITIVE_BASE = 1 << 20


# A few hundred bins cover any metric's range; the aggregator asks for them
# three times for each of ten buckets per reading.
@lru_cache(maxsize=65_536)
def bin_value(key: int) -> float:
    """The value a bin stands for (within the relative accuracy of every value in it)."""
    if key == 0:
        return 0.0
    try:
        magnitude = MAPPING.value(abs(key) - _POSITIVE_BASE)
    except OverflowError:
        # The top bins' midpoints lie past the float range; every value in them is at
        # its top, so the largest float stands for them within the accuracy.
        magnitude = sys.float_info.max
    return magnitude if key > 0 else -magnitude


@dataclass(slots=True)
class QuantileSketch:
    bins: dict[int, int] = field(default_factory=dict)

    def add_key(self, key: int, count: int = 1) -> None:
        self.bins[key] = self.bins.get(key, 0) + count

    def merge(self, other: QuantileSketch) -> None:
        bins = self.bins
        for key, count in other.bins.items():
            bins[key] = bins.get(key, 0) + count

    @property
    def count(self) -> int:
        return sum(self.bins.values())

    def quantiles(self, qs: Mapping[str, float] = PERCENTILES) -> dict[str, float | None]:
        """Several quantiles in one pass over the sorted bins."""
        total = self.count
        out: dict[str, float | None] = dict.fromkeys(qs)
        if total == 0:
            return out
        if len(self.bins) == 1:
            # Most fine buckets hold one value: every quantile is its bin.
            return dict.fromkeys(qs, bin_value(next(iter(self.bins))))
        wanted = sorted(((q * (total - 1), name) for name, q in qs.items()))
        seen = 0
        i = 0
        for key in sorted(self.bins):
            seen += self.bins[key]
            while i < len(wanted) and seen > wanted[i][0]:
                out[wanted[i][1]] = bin_value(key)
                i += 1
            if i == len(wanted):
                break
        return out

    def to_document(self) -> dict[str, Any]:
        # BSON keys are strings; the accuracy travels along so a reader never
        # merges bins made with another mapping.
        return {
            "relative_accuracy": RELATIVE_ACCURACY,
            "bins": {str(k): n for k, n in self.bins.items()},
        }

    @staticmethod
    def single_value_document(key: int) -> dict[str, Any]:
        """``to_document`` of a sketch holding one value in bin ``key``, without building it."""
        return {"relative_accuracy": RELATIVE_ACCURACY, "bins": {str(key): 1}}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any] | None) -> QuantileSketch:
        if not doc:
            return cls()
        if doc.get("relative_accuracy") != RELATIVE_ACCURACY:
            raise ValueError(
                f"sketch made with relative accuracy {doc.get('relative_accuracy')!r}, "
                f"this build uses {RELATIVE_ACCURACY}"
            )
        return cls({int(k): int(n) for k, n in doc.get("bins", {}).items()})
