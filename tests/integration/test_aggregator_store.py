"""The aggregator's partition-owned state on the real MongoDB wire server: a restarted
process, a replay, and a worker that lost its partition all leave each reading folded
exactly once."""

from __future__ import annotations

import pytest
from aggregator_worker.fold import PositionedReading
from aggregator_worker.store import PartitionState, raw_document
from integration.readings import fleet_readings
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.rollup_layout import ROLLUPS
from telemetry_common.infra.mongo import RAW, ensure_indexes
from telemetry_common.infra.ownership import PartitionOwnership, PartitionsLost
from telemetry_common.infra.settings import AggregatorSettings
from telemetry_tools.verify import rollup_mismatches

pytestmark = pytest.mark.integration

SETTINGS = AggregatorSettings()


def placed(
    readings: list[Reading], partition: int, first_offset: int = 0
) -> list[PositionedReading]:
    return [PositionedReading(partition, first_offset + i, r) for i, r in enumerate(readings)]


async def store_raw(db: AsyncDatabase, batch: list[PositionedReading]) -> None:
    await db[RAW].insert_many([raw_document(p) for p in batch])


async def owner(db: AsyncDatabase, partitions: set[int], name: str) -> PartitionState:
    """A worker that was just assigned ``partitions``."""
    ownership = PartitionOwnership(db, "aggregator-worker", "test", "telemetry.raw", name)
    state = PartitionState(
        db, ownership, SETTINGS.rollup_plan, SETTINGS.stored_retention, 10_000, 10_000
    )
    await state.partitions_assigned(partitions)
    return state


async def fold(state: PartitionState, batch: list[PositionedReading]) -> int:
    """Readings that added to a bucket or summary (not held already by a stored one)."""
    added = await state.fold(batch)
    outcome = await state.flush()
    return len(added) - len(outcome.replayed(added))


async def test_a_restarted_process_folds_into_buckets_it_does_not_remember(
    db: AsyncDatabase,
) -> None:
    await ensure_indexes(db, None)
    readings = placed(fleet_readings(devices=3, per_device=30), partition=0)
    await store_raw(db, readings)
    first, rest = readings[:40], readings[40:]
    assert await fold(await owner(db, {0}, "a"), first) == len(first)
    # A new process holds nothing: its inserts of the stored buckets fail on _id,
    # those are read once and merged, and the replayed first batch adds nothing.
    restarted = await owner(db, {0}, "b")
    await fold(restarted, first + rest)
    assert await rollup_mismatches(db, SETTINGS.rollup_plan.stored) == []
    # Held in memory now: the same records again are skipped without a read.
    assert await fold(restarted, first + rest) == 0
    assert await rollup_mismatches(db, SETTINGS.rollup_plan.stored) == []


async def test_a_worker_that_lost_its_partition_cannot_overwrite_the_new_owner(
    db: AsyncDatabase,
) -> None:
    await ensure_indexes(db, None)
    readings = placed(fleet_readings(devices=2, per_device=40), partition=0)
    await store_raw(db, readings)
    first, second, third = readings[:30], readings[30:60], readings[60:]
    stalled = await owner(db, {0}, "stalled")
    await fold(stalled, first)
    # The group moved partition 0 while `stalled` was frozen; the new owner starts
    # from the last commit (after `first`) and writes the same buckets.
    new_owner = await owner(db, {0}, "new")
    await fold(new_owner, second)
    before = {doc["_id"]: doc async for doc in db[ROLLUPS].find({})}
    # `stalled` wakes up with `second` and `third` folded in memory: refused.
    await stalled.fold(second + third)
    with pytest.raises(PartitionsLost) as lost:
        await stalled.flush()
    assert lost.value.partitions == {0}
    after = {doc["_id"]: doc async for doc in db[ROLLUPS].find({})}
    overwritten = [i for i in before if after[i] != before[i]]
    assert overwritten == []
    # What it forgot is the new owner's to fold; nothing ends up counted twice.
    await fold(new_owner, third)
    assert await rollup_mismatches(db, SETTINGS.rollup_plan.stored) == []


async def test_a_stale_write_to_a_bucket_the_new_owner_never_touched_is_merged_once(
    db: AsyncDatabase,
) -> None:
    await ensure_indexes(db, None)
    readings = placed(fleet_readings(devices=2, per_device=40), partition=0)
    await store_raw(db, readings)
    first, rest = readings[:40], readings[40:]
    stalled = await owner(db, {0}, "stalled")
    new_owner = await owner(db, {0}, "new")
    # The stalled worker's last batch lands on buckets the new owner has not
    # written yet; the new owner replays the same records from the last commit.
    await fold(stalled, first)
    await fold(new_owner, first + rest)
    assert await rollup_mismatches(db, SETTINGS.rollup_plan.stored) == []


async def test_held_state_stays_within_its_limit(db: AsyncDatabase) -> None:
    await ensure_indexes(db, None)
    readings = placed(fleet_readings(devices=5, per_device=40), partition=0)
    await store_raw(db, readings)
    ownership = PartitionOwnership(db, "aggregator-worker", "test", "telemetry.raw", "small")
    state = PartitionState(
        db, ownership, SETTINGS.rollup_plan, SETTINGS.stored_retention, 1_000, 1_000
    )
    state.buckets.limit = 20
    await state.partitions_assigned({0})
    for i in range(0, len(readings), 25):
        await fold(state, readings[i : i + 25])
        assert len(state.buckets) <= 20
    # Buckets let go and needed again were read back and merged, not overwritten.
    assert await rollup_mismatches(db, SETTINGS.rollup_plan.stored) == []
