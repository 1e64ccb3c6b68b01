"""`telemetry-migrate`: bring a store written by an earlier version to the current layout.

Two steps, each recorded in ``migrations`` when done, so a rerun skips it:

1. ``rollups-v2``: rollups from one document per metric to one per bucket (below);
2. ``projects-v1``: every reading, device, alert, rule, silence, webhook (and
   delivery) and key stored before projects is given the default project's id (``project_id:
   "default"``), which every query filters on. Only documents without one are
   written, so it is idempotent and a rerun continues where it stopped.

Stop the workers and run this before starting the new version (the services
create the project-led indexes and drop those they replace when they start).

Rollups before: ``aggregated_data``, one document per (device, metric, resolution,
bucket). Now: ``rollups``, one document per (project, device, resolution,
bucket) with every metric under ``metrics.<name>`` (see
:mod:`telemetry_common.domain.rollup_layout`).

Idempotent: a bucket is written from all of its legacy documents at once, with
``$setOnInsert`` of its identity, ``$set`` of each ``metrics.<name>`` and
``$max`` of the watermarks, ``updated_at`` and ``expire_at``, so writing it a
second time changes nothing.

Resumable: legacy documents are taken in ``_id`` order, a batch at a time, and
the last ``_id`` of each finished batch is recorded in ``migrations``
(``rollups-v2``); a rerun continues after it. A bucket is written by the batch
holding its first legacy document in ``_id`` order, which reads the bucket's
other metrics then, so every bucket is written once, whole.

Never over newer data: the new aggregator stamps each document it writes with
its partition owner epoch ``_e`` (1 or more). Migrated documents carry ``_e`` 0,
and the migration's writes only match documents whose ``_e`` is 0 or absent, so
a bucket the new aggregator already wrote is left exactly as it is (and counted
in the summary: its legacy figures are not in it, which is why the aggregator
should not run during the migration).

Watermarks: a document's ``_applied`` is, per Kafka partition, the highest
offset over its metrics. A metric whose own legacy ``_applied`` differs keeps it
as ``metrics.<name>._applied``, which the aggregator honours over the
document's: metrics of one bucket can differ after a crash between their
writes, and a replay must fold the missing offsets into the metric that lacks
them without folding them twice into the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, CursorNotFound
from telemetry_common.domain.resolutions import DEFAULT_PLAN, RollupPlan
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    LEGACY_ROLLUPS,
    ROLLUPS,
    bucket_document,
    windows_of,
)
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_keys import API_KEYS
from telemetry_common.infra.mongo import (
    ALERT_RULES,
    ALERT_SILENCES,
    ALERTS,
    DEVICES,
    RAW,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
    Collection,
    Database,
    connect,
    ensure_indexes,
)
from telemetry_common.infra.settings import RollupSettings
from tqdm import tqdm

MIGRATIONS = "migrations"
MIGRATION_ID = "rollups-v2"
PROJECTS_MIGRATION_ID = "projects-v1"
# What belongs to a project and was stored without one before projects. Rollups
# are not here: their documents carry the project since rollups-v2.
OWNED_BY_PROJECTS = (
    RAW,
    DEVICES,
    ALERTS,
    ALERT_RULES,
    ALERT_SILENCES,
    WEBHOOKS,
    WEBHOOK_DELIVERIES,
    API_KEYS,
)
WITHOUT_PROJECT = {"project_id": {"$exists": False}}
# Per-metric fields of the current layout: what the aggregator folds from.
METRIC_FIELDS = tuple(Rollup().to_fields())
# Below every partition owner's epoch, so the first write of a live owner wins.
MIGRATED_EPOCH = 0
NOT_YET_OWNED = {"_e": {"$in": [MIGRATED_EPOCH, None]}}
IDENTITY_FIELDS = ("project_id", "device_id", "resolution", "timestamp")
DUPLICATE_KEY = 11000
# Sibling ids per query: keeps each find well under MongoDB's 16 MB command size.
IDS_PER_QUERY = 10_000

BucketKey = tuple[str, str, datetime]


def bucket_key(legacy: Mapping[str, Any]) -> BucketKey:
    return legacy["device_id"], legacy["resolution"], legacy["timestamp"]


def merged_watermarks(legacy_docs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Per partition, the highest offset folded into any of the bucket's metrics."""
    merged: dict[str, int] = {}
    for doc in legacy_docs:
        for partition, offset in doc.get("_applied", {}).items():
            merged[partition] = max(merged.get(partition, offset), offset)
    return merged


def migrated_bucket(
    legacy_docs: Sequence[Mapping[str, Any]], merged: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The current layout's document for one bucket, from the legacy documents of its metrics;
    ``merged``: the resolutions merged at read time from this one's (name -> width)."""
    keys = {bucket_key(doc) for doc in legacy_docs}
    if len(keys) != 1:
        raise ValueError(f"legacy documents of more than one bucket: {sorted(keys)}")
    [(device_id, resolution, start)] = keys
    applied = merged_watermarks(legacy_docs)
    metrics: dict[str, dict[str, Any]] = {}
    for doc in legacy_docs:
        fields = {name: doc[name] for name in METRIC_FIELDS if name in doc}
        own = dict(doc.get("_applied", {}))
        if own != applied:
            fields["_applied"] = own
        metrics[doc["sensor_type"]] = fields
    written = [doc["updated_at"] for doc in legacy_docs if doc.get("updated_at") is not None]
    expiries = [doc["expire_at"] for doc in legacy_docs if doc.get("expire_at") is not None]
    new = bucket_document(
        project_id=DEFAULT_PROJECT,
        device_id=device_id,
        resolution=resolution,
        start=start,
        metrics=metrics,
        applied=applied,
        epoch=MIGRATED_EPOCH,
        now=max(written) if written else utcnow(),
        keep_for=None,
        windows=windows_of(start, merged or {}),
    )
    if not written:
        del new["updated_at"]
    if expiries:
        new["expire_at"] = max(expiries)
    return new


def bucket_upsert(new: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(filter, update) of a migrated bucket's idempotent upsert.

    The filter never matches a document a live owner wrote.
    """
    highest: dict[str, Any] = {
        f"_applied.{partition}": offset for partition, offset in new["_applied"].items()
    }
    for name in ("updated_at", "expire_at"):
        if name in new:
            highest[name] = new[name]
    identity = {name: new[name] for name in (*IDENTITY_FIELDS, "windows") if name in new}
    update: dict[str, Any] = {
        "$setOnInsert": {**identity, "_e": new["_e"]},
        "$set": {f"metrics.{metric}": fields for metric, fields in new["metrics"].items()},
    }
    if highest:
        update["$max"] = highest
    return {"_id": new["_id"], **NOT_YET_OWNED}, update


def buckets_starting_after(
    legacy_docs: Iterable[Mapping[str, Any]], after: str | None
) -> list[list[Mapping[str, Any]]]:
    """Each bucket's legacy documents, for the buckets whose first ``_id`` is past ``after``.

    The others were written, whole, by an earlier batch.
    """
    by_bucket: dict[BucketKey, dict[str, Mapping[str, Any]]] = {}
    for doc in legacy_docs:
        by_bucket.setdefault(bucket_key(doc), {})[doc["_id"]] = doc
    return [
        [docs[doc_id] for doc_id in sorted(docs)]
        for docs in by_bucket.values()
        if after is None or min(docs) > after
    ]


class _BucketReader:
    """Reads the legacy documents of every metric of the buckets a batch touches."""

    def __init__(self, legacy: Collection):
        self._legacy = legacy
        self._metrics_of: dict[str, list[str]] = {}

    async def buckets(
        self, batch: list[dict[str, Any]], after: str | None
    ) -> list[list[Mapping[str, Any]]]:
        devices = {doc["device_id"] for doc in batch}
        # A device's legacy ids share a prefix, so devices come one after the
        # other in _id order and one left behind never comes back.
        self._metrics_of = {d: m for d, m in self._metrics_of.items() if d in devices}
        for device in devices - self._metrics_of.keys():
            self._metrics_of[device] = await self._legacy.distinct(
                "sensor_type", {"device_id": device}
            )
        found: dict[str, Mapping[str, Any]] = {doc["_id"]: doc for doc in batch}
        sibling_ids: set[str] = set()
        for doc in batch:
            # A legacy id is device|metric|resolution|start: a bucket's other
            # metrics are found by _id, which every server looks up fast (a query
            # on the bucket's fields, $or'ed over a batch, scans on some).
            prefix = f"{doc['device_id']}|{doc['sensor_type']}|"
            if isinstance(doc["_id"], str) and doc["_id"].startswith(prefix):
                rest = doc["_id"][len(prefix) :]
                sibling_ids.update(
                    f"{doc['device_id']}|{metric}|{rest}"
                    for metric in self._metrics_of[doc["device_id"]]
                )
            else:
                device_id, resolution, start = bucket_key(doc)
                query = {"device_id": device_id, "resolution": resolution, "timestamp": start}
                found.update({d["_id"]: d async for d in self._legacy.find(query)})
        wanted = sorted(sibling_ids - found.keys())
        for i in range(0, len(wanted), IDS_PER_QUERY):
            query = {"_id": {"$in": wanted[i : i + IDS_PER_QUERY]}}
            found.update({d["_id"]: d async for d in self._legacy.find(query)})
        return buckets_starting_after(found.values(), after)


async def _in_id_order(
    collection: Collection,
    query: Mapping[str, Any],
    size: int,
    *,
    after: Any = None,
    projection: Mapping[str, Any] | None = None,
) -> AsyncGenerator[list[dict[str, Any]]]:
    """The documents matching ``query`` past ``after`` in ``_id`` order, ``size`` at a time,
    through one cursor.

    Not a query per batch: on secantusd a range open at its top costs a scan of
    all of it per query, even for a small limit (BENCHMARKS.md, design choices),
    which made the migration quadratic.
    """
    while True:
        bounded = {**query} if after is None else {**query, "_id": {"$gt": after}}
        cursor = collection.find(bounded, projection).sort("_id", ASCENDING).batch_size(size)
        try:
            while True:
                docs = await cursor.to_list(size)
                if docs:
                    after = docs[-1]["_id"]
                    yield docs
                if len(docs) < size:
                    return
        except CursorNotFound:
            # The server dropped the cursor (idle past its timeout while a
            # batch was written, or a failover): go on from the last batch.
            continue
        finally:
            await cursor.close()


async def _write_buckets(
    rollups: Collection, buckets: list[list[Mapping[str, Any]]], plan: RollupPlan
) -> tuple[int, int]:
    """(written, left as a live owner wrote them)."""
    # A resolution now merged at read time (5m from 1m) is served from its source's
    # buckets: its own legacy buckets are not carried over.
    kept = [docs for docs in buckets if bucket_key(docs[0])[1] in plan.stored]
    if not kept:
        return 0, 0
    writes = [
        UpdateOne(
            *bucket_upsert(migrated_bucket(docs, plan.derived_from(bucket_key(docs[0])[1]))),
            upsert=True,
        )
        for docs in kept
    ]
    try:
        await rollups.bulk_write(writes, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        # The filter did not match because _e >= 1, so the upsert tried to
        # insert a second document with that _id: the owner's stays as it is.
        owned = [
            e
            for e in errors
            if e.get("code") == DUPLICATE_KEY and e.get("keyPattern", {"_id": 1}) == {"_id": 1}
        ]
        if len(owned) != len(errors) or exc.details.get("writeConcernErrors"):
            raise
        return len(writes) - len(owned), len(owned)
    return len(writes), 0


@dataclass
class Outcome:
    # Legacy documents moved, over every run so far.
    moved: int
    buckets_written: int
    # Buckets the new aggregator had written already (_e >= 1), left as they are.
    buckets_left: int
    done: bool
    already_done: bool = False
    # Whether ensure_indexes created any index of the current layout's collection.
    indexed: bool = True


async def migrate(
    db: Database,
    *,
    batch: int = 1000,
    progress: bool = False,
    max_batches: int | None = None,
    plan: RollupPlan = DEFAULT_PLAN,
) -> Outcome:
    """Move every legacy rollup document into the current layout, from the last checkpoint on.

    ``max_batches`` stops early (as an interruption would), leaving the checkpoint
    where a rerun continues.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    migrations = db[MIGRATIONS]
    await migrations.update_one(
        {"_id": MIGRATION_ID},
        {
            "$setOnInsert": {
                "last_id": None,
                "done": False,
                "moved": 0,
                "buckets_left": 0,
                "started_at": utcnow(),
            }
        },
        upsert=True,
    )
    state = await migrations.find_one({"_id": MIGRATION_ID})
    assert state is not None
    if state["done"]:
        return Outcome(state["moved"], 0, 0, done=True, already_done=True)

    await ensure_indexes(db, None, plan.derived)
    indexes = {index["name"] async for index in await db[ROLLUPS].list_indexes()}
    indexed = bool(indexes - {"_id_"})

    legacy = db[LEGACY_ROLLUPS]
    reader = _BucketReader(legacy)
    last_id: str | None = state["last_id"]
    moved: int = state["moved"]
    left_total: int = state.get("buckets_left", 0)
    written = left = batches_done = 0
    done = False
    total = await legacy.estimated_document_count()
    with tqdm(
        total=max(total, moved),
        initial=moved,
        unit="doc",
        desc=f"{LEGACY_ROLLUPS} -> {ROLLUPS}",
        disable=not progress,
    ) as bar:
        async with aclosing(_in_id_order(legacy, {}, batch, after=last_id)) as batches:
            async for docs in batches:
                if max_batches is not None and batches_done >= max_batches:
                    break
                buckets = await reader.buckets(docs, last_id)
                batch_written, batch_left = await _write_buckets(db[ROLLUPS], buckets, plan)
                written += batch_written
                left += batch_left
                left_total += batch_left
                last_id = docs[-1]["_id"]
                moved += len(docs)
                # Recorded only after the batch's writes succeeded: a crash before
                # this line redoes the batch, which rewrites the same buckets.
                await migrations.update_one(
                    {"_id": MIGRATION_ID},
                    {"$set": {"last_id": last_id, "moved": moved, "buckets_left": left_total}},
                )
                bar.update(len(docs))
                batches_done += 1
            else:
                done = True
    if done:
        await migrations.update_one(
            {"_id": MIGRATION_ID}, {"$set": {"done": True, "finished_at": utcnow()}}
        )
    return Outcome(moved, written, left, done=done, indexed=indexed)


@dataclass
class Backfill:
    # Documents given the default project, per collection, in this run.
    changed: dict[str, int]
    already_done: bool = False


async def backfill_projects(db: Database, *, batch: int = 1000, progress: bool = False) -> Backfill:
    """Give the default project to every document stored before projects."""
    migrations = db[MIGRATIONS]
    state = await migrations.find_one({"_id": PROJECTS_MIGRATION_ID})
    if state is not None and state.get("done"):
        return Backfill({}, already_done=True)
    await migrations.update_one(
        {"_id": PROJECTS_MIGRATION_ID},
        {"$setOnInsert": {"done": False, "started_at": utcnow()}},
        upsert=True,
    )
    changed: dict[str, int] = {}
    for name in OWNED_BY_PROJECTS:
        collection = db[name]
        total = await collection.count_documents(WITHOUT_PROJECT)
        with tqdm(total=total, unit="doc", desc=f"{name}: project_id", disable=not progress) as bar:
            changed[name] = 0
            found = _in_id_order(collection, WITHOUT_PROJECT, batch, projection={"_id": 1})
            async with aclosing(found) as batches:
                async for docs in batches:
                    ids = [doc["_id"] for doc in docs]
                    result = await collection.update_many(
                        {"_id": {"$in": ids}, **WITHOUT_PROJECT},
                        {"$set": {"project_id": DEFAULT_PROJECT}},
                    )
                    changed[name] += result.modified_count
                    bar.update(len(ids))
    await migrations.update_one(
        {"_id": PROJECTS_MIGRATION_ID},
        {"$set": {"done": True, "finished_at": utcnow(), "changed": changed}},
    )
    return Backfill(changed)


async def drop_legacy(db: Database) -> bool:
    """Drop the legacy collection if the migration finished; whether it did."""
    state = await db[MIGRATIONS].find_one({"_id": MIGRATION_ID})
    if not state or not state.get("done"):
        return False
    await db.drop_collection(LEGACY_ROLLUPS)
    await db[MIGRATIONS].update_one(
        {"_id": MIGRATION_ID}, {"$set": {"legacy_dropped_at": utcnow()}}
    )
    return True


async def dry_run(db: Database) -> str:
    return f"{await _dry_run_rollups(db)}\n{await _dry_run_projects(db)}"


async def _dry_run_rollups(db: Database) -> str:
    state = await db[MIGRATIONS].find_one({"_id": MIGRATION_ID}) or {}
    legacy = db[LEGACY_ROLLUPS]
    total = await legacy.count_documents({})
    if state.get("done"):
        return (
            f"dry run: migration {MIGRATION_ID} finished at {state.get('finished_at')} "
            f"({state.get('moved', 0):,} legacy documents moved); {total:,} in {LEGACY_ROLLUPS}"
        )
    last_id = state.get("last_id")
    remaining = await legacy.count_documents({} if last_id is None else {"_id": {"$gt": last_id}})
    return (
        f"dry run: {total:,} legacy documents in {LEGACY_ROLLUPS}, {remaining:,} still to move "
        f"into {ROLLUPS}; nothing written"
    )


async def _dry_run_projects(db: Database) -> str:
    missing = {name: await db[name].count_documents(WITHOUT_PROJECT) for name in OWNED_BY_PROJECTS}
    listed = ", ".join(f"{name} {count:,}" for name, count in missing.items())
    return (
        f"dry run: {sum(missing.values()):,} documents without a project to give the "
        f"default project ({listed}); nothing written"
    )


async def _run(args: argparse.Namespace) -> int:
    client = connect(args.mongo_url, "telemetry-migrate")
    try:
        db = client[args.db]
        if args.dry_run:
            print(await dry_run(db))
            return 0
        began = time.monotonic()
        outcome = await migrate(
            db, batch=args.batch, progress=not args.quiet, plan=RollupSettings().rollup_plan
        )
        elapsed = time.monotonic() - began
        if outcome.already_done:
            print(
                f"telemetry-migrate: {MIGRATION_ID} already finished "
                f"({outcome.moved:,} legacy documents moved); nothing to do"
            )
        else:
            print(
                f"telemetry-migrate: {outcome.moved:,} legacy documents moved from "
                f"{LEGACY_ROLLUPS} to {ROLLUPS}; {outcome.buckets_written:,} bucket documents "
                f"written and {outcome.buckets_left:,} left as the new aggregator wrote them "
                f"in this run ({elapsed:.1f} s)"
            )
        if outcome.buckets_left:
            print(
                f"warning: {outcome.buckets_left:,} buckets were already written by the new "
                "aggregator and do not hold their legacy figures (it ran before the migration)",
                file=sys.stderr,
            )
        if not outcome.indexed:
            print(
                f"note: ensure_indexes made no index on {ROLLUPS}; the services create them "
                "when they start",
                file=sys.stderr,
            )
        if args.drop_legacy:
            dropped = await drop_legacy(db)
            print(f"{LEGACY_ROLLUPS} dropped" if dropped else f"{LEGACY_ROLLUPS} kept: not done")
        if not outcome.done:
            return 0
        backfill = await backfill_projects(db, batch=args.batch, progress=not args.quiet)
        if backfill.already_done:
            print(f"telemetry-migrate: {PROJECTS_MIGRATION_ID} already finished; nothing to do")
        else:
            listed = ", ".join(f"{name} {count:,}" for name, count in backfill.changed.items())
            print(
                f"telemetry-migrate: {sum(backfill.changed.values()):,} documents given the "
                f"default project ({listed})"
            )
        return 0
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="telemetry-migrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mongo-url", default=os.environ.get("MONGO_URL", "mongodb://localhost:27017")
    )
    parser.add_argument("--db", default=os.environ.get("MONGO_DB", "iotdb"))
    parser.add_argument(
        "--batch", type=int, default=1000, help="documents per batch and checkpoint"
    )
    parser.add_argument(
        "--drop-legacy",
        action="store_true",
        help=f"drop {LEGACY_ROLLUPS} once every document is moved",
    )
    parser.add_argument("--dry-run", action="store_true", help="count only; write nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    try:
        sys.exit(asyncio.run(_run(args)))
    except KeyboardInterrupt:
        print("interrupted; run telemetry-migrate again to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
