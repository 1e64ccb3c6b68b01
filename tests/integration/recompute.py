"""One-minute rollups recomputed from telemetry_raw, the reference the aggregator must match.

Every resolution with percentiles: telemetry_tools.verify.rollup_mismatches.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.rollup_layout import RowSelection, bucket_filter, metric_rows
from telemetry_common.infra.mongo import RAW, ROLLUPS


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


async def stored_rows(
    db: AsyncDatabase, resolution: str, metric: str | None = None, device_id: str | None = None
) -> list[dict[str, Any]]:
    """Stored rollups of ``resolution`` as the API serves them: a row per metric and bucket."""
    query = bucket_filter(resolution, RowSelection(device_id=device_id, metric=metric))
    return [row async for doc in db[ROLLUPS].find(query) for row in metric_rows(doc, metric)]


async def stored_minute_rollups(db: AsyncDatabase) -> dict[tuple[str, str, Any], dict[str, float]]:
    return {
        (row["device_id"], row["sensor_type"], row["timestamp"]): {
            field: row[field] for field in ("count", "sum", "min", "max", "average")
        }
        for row in await stored_rows(db, "1m")
    }


def assert_rollups_equal(stored: dict, expected: dict) -> None:
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        assert got["count"] == want["count"], key
        for field in ("sum", "min", "max", "average"):
            assert math.isclose(got[field], want[field], rel_tol=1e-9, abs_tol=1e-9), (key, field)
