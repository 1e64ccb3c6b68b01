"""Rollups recomputed from telemetry_raw, the reference the aggregator must match."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.mongo import RAW, ROLLUPS
from telemetry_common.resolutions import bucket_start
from telemetry_common.sketch import PERCENTILES, RELATIVE_ACCURACY


async def recompute_minute_rollups(
    db: AsyncDatabase,
) -> dict[tuple[str, str, Any], dict[str, float]]:
    values: dict[tuple[str, str, Any], list[float]] = defaultdict(list)
    async for doc in db[RAW].find({}):
        minute = doc["ts"].replace(second=0, microsecond=0)
        for metric, value in doc["metrics"].items():
            values[(doc["device_id"], metric, minute)].append(value)
    return {
        key: {
            "count": len(v),
            "sum": sum(v),
            "min": min(v),
            "max": max(v),
            "average": sum(v) / len(v),
        }
        for key, v in values.items()
    }


async def stored_minute_rollups(db: AsyncDatabase) -> dict[tuple[str, str, Any], dict[str, float]]:
    return {
        (doc["device_id"], doc["sensor_type"], doc["timestamp"]): {
            field: doc[field] for field in ("count", "sum", "min", "max", "average")
        }
        async for doc in db[ROLLUPS].find({"resolution": "1m"})
    }


def assert_rollups_equal(stored: dict, expected: dict) -> None:
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        assert got["count"] == want["count"], key
        for field in ("sum", "min", "max", "average"):
            assert math.isclose(got[field], want[field], rel_tol=1e-9, abs_tol=1e-9), (key, field)


# --- every resolution, exactly, with percentiles within the sketch's bound ----------------

BucketId = tuple[str, str, str, Any]


async def recompute_all_rollups(
    db: AsyncDatabase, resolutions: dict[str, int]
) -> dict[BucketId, list[float]]:
    """Every bucket's values, straight from telemetry_raw."""
    values: dict[BucketId, list[float]] = defaultdict(list)
    async for doc in db[RAW].find({}, {"device_id": 1, "ts": 1, "metrics": 1}):
        for resolution, width in resolutions.items():
            start = bucket_start(doc["ts"], width)
            for metric, value in doc["metrics"].items():
                values[(doc["device_id"], metric, resolution, start)].append(value)
    return values


def _exact_quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


async def rollup_mismatches(db: AsyncDatabase, resolutions: dict[str, int]) -> list[str]:
    """Where stored buckets differ from a recomputation: count, sum, min, max exactly
    (sums are exact, so equal to math.fsum of the raw values), percentiles within the
    sketch's relative accuracy. Empty when every bucket at every resolution is right."""
    expected = await recompute_all_rollups(db, resolutions)
    stored = {
        (doc["device_id"], doc["sensor_type"], doc["resolution"], doc["timestamp"]): doc
        async for doc in db[ROLLUPS].find({}, {"_applied": 0, "sketch": 0, "sum_partials": 0})
    }
    problems = [f"{key}: stored but no raw reading" for key in stored.keys() - expected.keys()]
    problems += [f"{key}: missing" for key in expected.keys() - stored.keys()]
    for key in expected.keys() & stored.keys():
        values = sorted(expected[key])
        doc = stored[key]
        want = {"count": len(values), "sum": math.fsum(values), "min": values[0], "max": values[-1]}
        for field, value in want.items():
            if doc[field] != value:
                problems.append(f"{key}: {field} {doc[field]!r} != {value!r}")
        for name, q in PERCENTILES.items():
            exact = _exact_quantile(values, q)
            if abs(doc[name] - exact) > RELATIVE_ACCURACY * abs(exact) + 1e-300:
                problems.append(f"{key}: {name} {doc[name]!r} not within 1% of {exact!r}")
    return problems
