"""The aggregator's bucket writes on the real MongoDB wire server: buckets it does not
remember, concurrent writers and replays all fold each reading exactly once."""

from __future__ import annotations

import asyncio

import pytest
from aggregator_worker.fold import Placed, fold_batch
from aggregator_worker.store import RecentBuckets, raw_document, write_rollups
from integration.readings import fleet_readings
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.mongo import RAW, ensure_indexes
from telemetry_common.reading import Reading
from telemetry_common.settings import AggregatorSettings
from telemetry_tools.verify import rollup_mismatches

pytestmark = pytest.mark.integration

SETTINGS = AggregatorSettings()


def placed(readings: list[Reading], partition: int, first_offset: int = 0) -> list[Placed]:
    return [Placed(partition, first_offset + i, r) for i, r in enumerate(readings)]


async def store_raw(db: AsyncDatabase, batch: list[Placed]) -> None:
    await db[RAW].insert_many([raw_document(p) for p in batch])


async def fold(db: AsyncDatabase, batch: list[Placed], recent: RecentBuckets) -> int:
    buckets = fold_batch(batch, SETTINGS.resolutions)
    writes = await write_rollups(db, buckets, SETTINGS.retention, recent)
    return len(writes.applied)


async def test_a_restarted_process_folds_into_buckets_it_does_not_remember(
    db: AsyncDatabase,
) -> None:
    await ensure_indexes(db, None)
    readings = placed(fleet_readings(devices=3, per_device=30), partition=0)
    await store_raw(db, readings)
    first, rest = readings[:40], readings[40:]
    assert await fold(db, first, RecentBuckets()) == len(first)
    # A new process remembers nothing: its inserts of the existing buckets fail
    # on _id and those buckets are read and replaced instead, and the replayed
    # first batch is skipped by the watermarks.
    restarted = RecentBuckets()
    assert await fold(db, first + rest, restarted) == len(rest)
    assert len(restarted) > 0
    assert await fold(db, first + rest, restarted) == 0
    assert await rollup_mismatches(db, SETTINGS.resolutions) == []


async def test_two_writers_creating_the_same_buckets_lose_nothing(db: AsyncDatabase) -> None:
    # Two consumers briefly own partitions whose readings share buckets (a
    # rebalance): both insert the same new buckets at once, one wins each _id
    # and the other folds its readings into the winner's bucket.
    await ensure_indexes(db, None)
    readings = fleet_readings(devices=2, per_device=40)
    left = placed(readings[0::2], partition=0)
    right = placed(readings[1::2], partition=1)
    await store_raw(db, left + right)
    applied = await asyncio.gather(
        fold(db, left, RecentBuckets()), fold(db, right, RecentBuckets())
    )
    assert applied == [len(left), len(right)]
    assert await rollup_mismatches(db, SETTINGS.resolutions) == []
