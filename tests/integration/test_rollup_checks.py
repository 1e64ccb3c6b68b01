"""telemetry_tools.verify on stored bucket documents: what chaos runs and tests hold rollups to.

Buckets are written here as the aggregator stores them, right or wrong on
purpose, so the checks are seen to pass a right store and to catch a wrong one.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.resolutions import bucket_start
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, bucket_document, bucket_id
from telemetry_common.infra.mongo import RAW, ROLLUPS
from telemetry_tools.verify import double_counted, rollup_mismatches, value_counts

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
RESOLUTIONS = {"1m": 60, "1h": 3600}
# c-1 is a prefix of c-10: a check of scenario "c-1" covers both, never d-1.
DEVICES = ("c-1", "c-10", "d-1")


def readings() -> list[dict[str, Any]]:
    return [
        {
            "_id": f"{device}-{i}",
            "project_id": DEFAULT_PROJECT,
            "device_id": device,
            "ts": T0 + timedelta(seconds=20 * i),
            "received_at": T0,
            "metrics": {"temperature_c": 20.0 + i, "humidity": 50.0 - i},
            "tags": [],
        }
        for device in DEVICES
        for i in range(5)
    ]


def buckets_of(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bucket documents a correct aggregator stores for ``raw``."""
    folded: dict[tuple[str, str, datetime], dict[str, Rollup]] = defaultdict(dict)
    for reading in raw:
        for resolution, width in RESOLUTIONS.items():
            key = (reading["device_id"], resolution, bucket_start(reading["ts"], width))
            for metric, value in reading["metrics"].items():
                folded[key].setdefault(metric, Rollup()).add(value, reading["ts"])
    return [
        bucket_document(
            project_id=DEFAULT_PROJECT,
            device_id=device,
            resolution=resolution,
            start=start,
            metrics={metric: rollup.to_fields() for metric, rollup in metrics.items()},
            applied={"0": 1},
            epoch=1,
            now=T0,
            keep_for=None,
        )
        for (device, resolution, start), metrics in folded.items()
    ]


@pytest.fixture
async def stored(db: AsyncDatabase) -> AsyncDatabase:
    raw = readings()
    await db[RAW].insert_many(raw)
    await db[ROLLUPS].insert_many(buckets_of(raw))
    return db


async def test_a_right_store_passes_every_check(stored: AsyncDatabase) -> None:
    assert await rollup_mismatches(stored, RESOLUTIONS) == []
    assert await double_counted(stored, "1m") == 0
    raw, rolled = await value_counts(stored, "1h", "c-1")
    assert (
        raw
        == rolled
        == {
            (device, metric): 5
            for device in ("c-1", "c-10")
            for metric in ("temperature_c", "humidity")
        }
    )


async def test_a_value_counted_twice_is_caught_in_its_devices_scenario(
    stored: AsyncDatabase,
) -> None:
    minute = bucket_id(DEFAULT_PROJECT, "c-10", "1m", T0)
    doc = await stored[ROLLUPS].find_one({"_id": minute})
    assert doc is not None
    humidity = Rollup.from_fields(doc["metrics"]["humidity"])
    humidity.add(50.0, T0)  # the first reading's humidity, folded again
    await stored[ROLLUPS].update_one(
        {"_id": minute}, {"$set": {"metrics.humidity": humidity.to_fields()}}
    )
    assert await double_counted(stored, "1m", "c-1") == 1
    assert await double_counted(stored, "1m", "d-") == 0
    problems = await rollup_mismatches(stored, RESOLUTIONS, "c-1")
    assert problems and all("'c-10', 'humidity', '1m'" in p for p in problems)
    assert await rollup_mismatches(stored, RESOLUTIONS, "d-1") == []


async def test_a_missing_metric_and_a_bucket_without_readings_are_caught(
    stored: AsyncDatabase,
) -> None:
    hour = bucket_id(DEFAULT_PROJECT, "d-1", "1h", T0)
    await stored[ROLLUPS].update_one({"_id": hour}, {"$unset": {"metrics.temperature_c": ""}})
    stray = Rollup()
    stray.add(1.0, T0 - timedelta(hours=1))
    await stored[ROLLUPS].insert_one(
        bucket_document(
            project_id=DEFAULT_PROJECT,
            device_id="d-1",
            resolution="1m",
            start=T0 - timedelta(hours=1),
            metrics={"temperature_c": stray.to_fields()},
            applied={"0": 1},
            epoch=1,
            now=T0,
            keep_for=None,
        )
    )
    problems = await rollup_mismatches(stored, RESOLUTIONS, "d-1")
    assert sorted(p.rsplit(": ", 1)[1] for p in problems) == [
        "missing",
        "stored but no raw reading",
    ]
