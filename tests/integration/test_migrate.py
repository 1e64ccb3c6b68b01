"""telemetry-migrate on the real MongoDB wire server, over a store the layout before wrote:
every legacy document is served the same from the new layout; a second run, an
interrupted one and a bucket the new aggregator already owns change nothing."""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.resolutions import (
    DEFAULT_PLAN,
    DEFAULT_RESOLUTIONS,
    EPOCH,
    RollupPlan,
    parse_resolutions,
)
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    LEGACY_ROLLUPS,
    ROLLUPS,
    bucket_document,
    bucket_id,
    metric_rows,
    parse_bucket_id,
)
from telemetry_common.domain.timefmt import to_utc_ms
from telemetry_tools.migrate import MIGRATION_ID, MIGRATIONS, migrate
from telemetry_tools.servers import MongoServer

pytestmark = pytest.mark.integration

# Every resolution stored, as before resolutions were merged at read time, so each
# legacy bucket has a document to move into (the default is tested on its own).
ALL_STORED = RollupPlan.of(
    parse_resolutions(DEFAULT_RESOLUTIONS), parse_resolutions(DEFAULT_RESOLUTIONS)
)

START = datetime(2025, 1, 15, 9, 40, tzinfo=UTC)
WIDTHS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
# The defaults' shape: fine resolutions expire, the daily one is kept forever.
KEEP = {"1m": timedelta(days=7), "5m": timedelta(days=30), "1h": timedelta(days=365), "1d": None}
# Device ids and metric names that are prefixes of others, whose legacy ids
# interleave in _id order ("dev-b2|..." sorts before "dev-b|...").
METRICS_OF = {
    "dev-a": ("temperature_c", "humidity", "cpu", "cpu_load"),
    "dev-b": ("temperature_c", "humidity"),
    "dev-b2": ("pressure",),
    "site-3:dev.9": ("temperature_c", "cpu"),
}
PUBLIC = (
    "count",
    "sum",
    "min",
    "max",
    "average",
    "stddev",
    "first",
    "first_ts",
    "last",
    "last_ts",
    "p50",
    "p95",
    "p99",
    "device_id",
    "sensor_type",
    "resolution",
    "timestamp",
)
# The bucket whose metrics were left at different offsets by a crash between their writes.
BEHIND = ("dev-a", "humidity", "5m", START + timedelta(minutes=5))


def legacy_store() -> list[dict[str, Any]]:
    """Documents as the aggregator of the layout before left them: a rollup per (device,
    metric, resolution, bucket) with the offsets it folded, each reading on its device's
    partition, not every reading carrying every metric."""
    rng = random.Random(20250115)
    # Retention counts from the last write: recent, so no TTL monitor deletes them mid-test.
    written_base = to_utc_ms(datetime.now(UTC)) - timedelta(hours=1)
    rollups: dict[tuple[str, str, str, datetime], Rollup] = {}
    applied: dict[tuple[str, str, str, datetime], dict[str, int]] = defaultdict(dict)
    next_offset = [0, 0]
    for index, (device, metrics) in enumerate(METRICS_OF.items()):
        partition = index % 2
        for i in range(70):
            ts = START + timedelta(seconds=31 * i + index)
            offset = next_offset[partition]
            next_offset[partition] += 1
            carried = [metrics[0], *(m for m in metrics[1:] if rng.random() < 0.7)]
            for metric in carried:
                value = round(rng.uniform(-20, 80), 2)
                for resolution, width in WIDTHS.items():
                    seconds = int((ts - EPOCH).total_seconds())
                    start = EPOCH + timedelta(seconds=seconds - seconds % width)
                    key = (device, metric, resolution, start)
                    rollups.setdefault(key, Rollup()).add(value, ts)
                    applied[key][str(partition)] = offset
    docs = []
    for key, rollup in rollups.items():
        device, metric, resolution, start = key
        written = written_base + timedelta(seconds=rng.randrange(3600))
        doc = {
            "_id": f"{device}|{metric}|{resolution}|{int((start - EPOCH).total_seconds())}",
            "device_id": device,
            "sensor_type": metric,
            "resolution": resolution,
            "timestamp": start,
            **rollup.to_fields(),
            "updated_at": written,
            "_applied": applied[key],
            "_v": rng.randrange(1, 9),
        }
        if KEEP[resolution] is not None:
            doc["expire_at"] = written + KEEP[resolution]
        docs.append(doc)
    behind = next(
        d
        for d in docs
        if (d["device_id"], d["sensor_type"], d["resolution"], d["timestamp"]) == BEHIND
    )
    behind["_applied"] = {p: offset - 2 for p, offset in behind["_applied"].items()}
    return docs


async def write_legacy_store(
    db: AsyncDatabase, docs: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    docs = legacy_store() if docs is None else docs
    await db[LEGACY_ROLLUPS].create_indexes(
        [
            IndexModel(
                [(f, ASCENDING) for f in ("device_id", "sensor_type", "resolution", "timestamp")],
                name="bucket_unique",
                unique=True,
            )
        ]
    )
    await db[LEGACY_ROLLUPS].insert_many(docs)
    return docs


def by_bucket(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        new_id = bucket_id(DEFAULT_PROJECT, doc["device_id"], doc["resolution"], doc["timestamp"])
        buckets[new_id].append(doc)
    return buckets


async def rollup_documents(db: AsyncDatabase) -> list[dict[str, Any]]:
    return await db[ROLLUPS].find().sort("_id", ASCENDING).to_list()


async def checkpoint(db: AsyncDatabase) -> dict[str, Any]:
    state = await db[MIGRATIONS].find_one({"_id": MIGRATION_ID})
    assert state is not None
    return state


async def test_every_legacy_document_is_served_the_same_from_the_new_layout(
    db: AsyncDatabase,
) -> None:
    legacy = await write_legacy_store(db)
    buckets = by_bucket(legacy)
    assert any(d["resolution"] == "1d" for d in legacy)
    assert any(len({str(d["_applied"]) for d in docs}) > 1 for docs in buckets.values())

    outcome = await migrate(db, batch=37, plan=ALL_STORED)

    assert outcome.done and outcome.moved == len(legacy)
    assert outcome.buckets_written == len(buckets) and outcome.buckets_left == 0
    stored = {doc["_id"]: doc for doc in await rollup_documents(db)}
    assert stored.keys() == buckets.keys()
    for new_id, docs in buckets.items():
        new = stored[new_id]
        assert new["project_id"] == DEFAULT_PROJECT and new["_e"] == 0
        assert set(new["metrics"]) == {d["sensor_type"] for d in docs}
        for doc in docs:
            [row] = metric_rows(new, doc["sensor_type"])
            assert {f: row[f] for f in PUBLIC} == {f: doc[f] for f in PUBLIC}, doc["_id"]
        highest: dict[str, int] = {}
        for doc in docs:
            for partition, offset in doc["_applied"].items():
                highest[partition] = max(highest.get(partition, offset), offset)
        assert new["_applied"] == highest
        for doc in docs:
            own = new["metrics"][doc["sensor_type"]].get("_applied", highest)
            assert own == doc["_applied"]
        assert new["updated_at"] == max(d["updated_at"] for d in docs)
        if docs[0]["resolution"] == "1d":
            assert "expire_at" not in new
        else:
            assert new["expire_at"] == max(d["expire_at"] for d in docs)

    device, metric, resolution, start = BEHIND
    behind = stored[bucket_id(DEFAULT_PROJECT, device, resolution, start)]
    assert behind["metrics"][metric]["_applied"] != behind["_applied"]
    assert "_applied" not in behind["metrics"]["temperature_c"]
    state = await checkpoint(db)
    assert state["done"] and state["moved"] == len(legacy) and state["finished_at"]


async def test_running_it_again_changes_nothing(db: AsyncDatabase) -> None:
    legacy = await write_legacy_store(db)
    await migrate(db, batch=50, plan=ALL_STORED)
    after_first = await rollup_documents(db)
    state = await checkpoint(db)

    again = await migrate(db, batch=50, plan=ALL_STORED)
    assert again.already_done and again.buckets_written == 0
    assert await rollup_documents(db) == after_first
    assert await checkpoint(db) == state

    # Without its checkpoint it rewrites every bucket, to the same content.
    await db[MIGRATIONS].delete_one({"_id": MIGRATION_ID})
    from_scratch = await migrate(db, batch=13, plan=ALL_STORED)
    assert from_scratch.done and from_scratch.moved == len(legacy)
    assert from_scratch.buckets_written == len(after_first)
    assert await rollup_documents(db) == after_first


async def test_an_interrupted_migration_resumes_and_ends_as_an_uninterrupted_one(
    db: AsyncDatabase,
) -> None:
    legacy = await write_legacy_store(db)
    uninterrupted = db.client[f"{db.name}_whole"]
    try:
        await write_legacy_store(uninterrupted, legacy)
        await migrate(uninterrupted, batch=1000, plan=ALL_STORED)
        expected = await rollup_documents(uninterrupted)
    finally:
        await db.client.drop_database(uninterrupted.name)

    stopped = await migrate(db, batch=11, max_batches=3, plan=ALL_STORED)
    assert not stopped.done and stopped.moved == 33
    partial = await rollup_documents(db)
    assert 0 < len(partial) < len(expected)
    state = await checkpoint(db)
    assert (
        not state["done"]
        and state["moved"] == 33
        and state["last_id"] == sorted(d["_id"] for d in legacy)[32]
    )

    # A crash after a batch's writes and before its checkpoint: the rerun redoes it.
    await migrate(db, batch=11, max_batches=1, plan=ALL_STORED)
    await db[MIGRATIONS].update_one(
        {"_id": MIGRATION_ID}, {"$set": {"last_id": state["last_id"], "moved": state["moved"]}}
    )

    resumed = await migrate(db, batch=29, plan=ALL_STORED)
    assert resumed.done and resumed.moved == len(legacy)
    assert await rollup_documents(db) == expected


async def test_a_bucket_the_new_aggregator_wrote_is_left_as_it_was(db: AsyncDatabase) -> None:
    legacy = await write_legacy_store(db)
    device, _, resolution, start = BEHIND
    owned = bucket_document(
        project_id=DEFAULT_PROJECT,
        device_id=device,
        resolution=resolution,
        start=start,
        metrics={"temperature_c": Rollup.single_fields(30.0, start, 0)},
        applied={"0": 10_000},
        epoch=2,
        now=to_utc_ms(datetime.now(UTC)),
        keep_for=KEEP[resolution],
    )
    await db[ROLLUPS].insert_one(owned)

    outcome = await migrate(db, batch=40, plan=ALL_STORED)

    assert outcome.done and outcome.buckets_left == 1
    assert outcome.buckets_written == len(by_bucket(legacy)) - 1
    assert await db[ROLLUPS].find_one({"_id": owned["_id"]}) == owned
    assert (await checkpoint(db))["buckets_left"] == 1
    await db[MIGRATIONS].delete_one({"_id": MIGRATION_ID})
    assert (await migrate(db, batch=40, plan=ALL_STORED)).buckets_left == 1
    assert await db[ROLLUPS].find_one({"_id": owned["_id"]}) == owned


async def test_a_store_with_nothing_to_move_is_done_at_once(db: AsyncDatabase) -> None:
    outcome = await migrate(db, plan=ALL_STORED)
    assert outcome.done and outcome.moved == 0 and outcome.buckets_written == 0
    assert (await checkpoint(db))["done"]


async def run_command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    script = Path(sys.executable).with_name("telemetry-migrate")
    process = await asyncio.create_subprocess_exec(
        str(script),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_counts_moves_and_drops_the_legacy_collection(
    db: AsyncDatabase, mongo_server: MongoServer
) -> None:
    legacy = await write_legacy_store(db)
    env = {
        "MONGO_URL": mongo_server.url,
        "MONGO_DB": db.name,
        "ROLLUP_MATERIALIZED": DEFAULT_RESOLUTIONS,
    }

    code, out, _ = await run_command("--dry-run", env=env)
    assert code == 0
    assert f"{len(legacy):,} legacy documents in {LEGACY_ROLLUPS}, {len(legacy):,} still" in out
    assert await db[ROLLUPS].count_documents({}) == 0

    code, out, err = await run_command("--batch", "64", "--drop-legacy", env=env)
    assert code == 0, err
    assert f"{len(legacy):,} legacy documents moved" in out
    assert f"{LEGACY_ROLLUPS} dropped" in out
    assert "100%" in err  # the progress bar reached the end
    assert LEGACY_ROLLUPS not in await db.list_collection_names()
    assert await db[ROLLUPS].count_documents({}) == len(by_bucket(legacy))

    code, out, _ = await run_command("--quiet", env=env)
    assert code == 0 and "already finished" in out


async def test_resolutions_merged_when_read_are_not_carried_over(db: AsyncDatabase) -> None:
    legacy = await write_legacy_store(db)
    merged = set(DEFAULT_PLAN.derived)
    assert merged and any(d["resolution"] in merged for d in legacy)

    outcome = await migrate(db, batch=50)

    kept = {
        i: docs
        for i, docs in by_bucket(legacy).items()
        if parse_bucket_id(i).resolution not in merged
    }
    assert outcome.done and outcome.moved == len(legacy)
    assert outcome.buckets_written == len(kept)
    stored = {doc["_id"]: doc for doc in await rollup_documents(db)}
    assert stored.keys() == kept.keys()
    # Minute buckets name the 5m and 15m windows they are merged into.
    minutes = [doc for doc in stored.values() if doc["resolution"] == "1m"]
    assert minutes
    for doc in minutes:
        start = doc["timestamp"]
        assert doc["windows"] == {
            name: start - timedelta(seconds=(start - EPOCH).total_seconds() % width)
            for name, width in DEFAULT_PLAN.derived_from("1m").items()
        }
