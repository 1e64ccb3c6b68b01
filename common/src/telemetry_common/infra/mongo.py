"""MongoDB: the client every service builds, the collections and their indexes.

Everything reaches MongoDB through ``MONGO_URL`` only, so the wire server used
locally and in tests and a real mongod are interchangeable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

# Defined with the layout; re-exported here beside the other collections' names.
from telemetry_common.domain.rollup_layout import LEGACY_ROLLUPS as LEGACY_ROLLUPS
from telemetry_common.domain.rollup_layout import ROLLUPS as ROLLUPS
from telemetry_common.domain.rollup_layout import window_field, window_index_name

log = logging.getLogger(__name__)

# Every collection is read and written as plain dicts (BSON documents decoded by
# PyMongo's default codec); these name that once for the type checker.
Document = dict[str, Any]
Client = AsyncMongoClient[Document]
Database = AsyncDatabase[Document]
Collection = AsyncCollection[Document]

RAW = "telemetry_raw"
ALERTS = "alerts"
DEVICES = "devices"
WEBHOOKS = "webhooks"
WEBHOOK_DELIVERIES = "webhook_deliveries"
# Each webhook URL's circuit as the alerts worker last changed it (dashboards show it).
WEBHOOK_CIRCUITS = "webhook_circuits"
ALERT_RULES = "alert_rules"
ALERT_SILENCES = "alert_silences"


def connect(url: str, app_name: str) -> Client:
    # tz_aware: dates come back as aware UTC datetimes, never naive ones that a
    # later .isoformat() would print without an offset.
    return AsyncMongoClient(
        url,
        tz_aware=True,
        appname=app_name,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
    )


# IndexOptionsConflict: an index of that name exists with other options (another TTL).
INDEX_OPTIONS_CONFLICT = 85
INDEX_NOT_FOUND = 27


def newest_first(field: str) -> list[tuple[str, int]]:
    """Newest first with ``_id`` breaking ties: the order of every paged listing.

    With ``_id`` in the index, a page after a cursor (key, _id) is an index range;
    without it MongoDB sorts every matching document in memory to order the ties.
    """
    return [(field, DESCENDING), ("_id", DESCENDING)]


PROJECT = ("project_id", ASCENDING)

# Indexes replaced by the project-led ones (which serve every query these did,
# within a project), and those before them, without the ``_id`` tie-break.
# LEGACY_ROLLUPS is left as it is: telemetry-migrate reads it, and nothing else does.
SUPERSEDED_INDEXES = {
    RAW: ("device_ts", "tags_ts", "ts", "device_ts_id", "tags_ts_id", "ts_id"),
    ALERTS: (
        "created_at",
        "device_created_at",
        "status_created",
        "created_at_id",
        "device_created_at_id",
        "status_created_id",
        "rule_created_id",
    ),
    WEBHOOKS: ("created_at_id",),
}


async def ensure_indexes(
    db: Database,
    raw_retention: timedelta | None,
    merged_resolutions: Iterable[str] = (),
) -> None:
    """Create the indexes the queries and the idempotent writes rely on (no-op when present).

    Only the aggregator, which writes raw readings, passes ``raw_retention``: the
    other services leave the TTL to it, so a changed RAW_RETENTION is not fought
    over by services that still carry the default.
    """
    # Every listing is one project's: the project leads each index, so one
    # project's page never walks past another's keys.
    await db[RAW].create_indexes(
        [
            IndexModel(
                [PROJECT, ("device_id", ASCENDING), *newest_first("ts")],
                name="project_device_ts_id",
            ),
            IndexModel(
                [PROJECT, ("tags", ASCENDING), *newest_first("ts")], name="project_tags_ts_id"
            ),
            IndexModel([PROJECT, *newest_first("ts")], name="project_ts_id"),
        ]
    )
    if raw_retention is not None:
        # Retention counts from arrival, not from the reading's own time, so a
        # backfill of old history is kept for the full period like any reading.
        await _ensure_ttl(db, RAW, "received_at", "received_at_ttl", raw_retention)
    await db[ROLLUPS].create_indexes(
        [
            # Listings across devices. A device's own buckets are an ``_id`` range
            # (see rollup_layout), so no index leads with device_id: every index
            # is paid for on each of the aggregator's bucket writes.
            IndexModel(
                [("project_id", ASCENDING), ("resolution", ASCENDING), *newest_first("timestamp")],
                name="project_resolution_ts_id",
            ),
            # Each bucket carries its own expiry (resolutions differ in retention);
            # a bucket kept forever has no expire_at and is never touched.
            IndexModel([("expire_at", ASCENDING)], name="expire_at_ttl", expireAfterSeconds=0),
            # Listings across devices of a resolution merged at read time: its
            # window's stored buckets, grouped by device (see rollup_layout).
            *(
                IndexModel(
                    [
                        ("project_id", ASCENDING),
                        ("resolution", ASCENDING),
                        *newest_first(window_field(resolution)),
                    ],
                    name=window_index_name(resolution),
                )
                for resolution in merged_resolutions
            ),
        ]
    )
    await db[ALERTS].create_indexes(
        [
            IndexModel([PROJECT, *newest_first("created_at")], name="project_created_at_id"),
            IndexModel(
                [PROJECT, ("device_id", ASCENDING), *newest_first("created_at")],
                name="project_device_created_at_id",
            ),
            IndexModel(
                [PROJECT, ("status", ASCENDING), *newest_first("created_at")],
                name="project_status_created_id",
            ),
            # GET /alerts?rule_id=: one rule's history.
            IndexModel(
                [PROJECT, ("rule_id", ASCENDING), *newest_first("created_at")],
                name="project_rule_created_id",
            ),
        ]
    )
    await db[DEVICES].create_indexes(
        [
            IndexModel([("last_seen", DESCENDING)], name="last_seen"),
            # GET /devices: a project's devices in id order (a device's _id is
            # scoped by its project, see rollup_layout.scoped_id).
            IndexModel([PROJECT, ("_id", ASCENDING)], name="project_id_id"),
        ]
    )
    await db[WEBHOOKS].create_indexes(
        [IndexModel([PROJECT, *newest_first("created_at")], name="project_created_at_id")]
    )
    for collection in (ALERT_RULES, ALERT_SILENCES):
        await db[collection].create_indexes(
            [IndexModel([PROJECT, *newest_first("created_at")], name="project_created_at_id")]
        )
    for collection, names in SUPERSEDED_INDEXES.items():
        await _drop_indexes(db, collection, names)
    await db[WEBHOOK_DELIVERIES].create_indexes(
        [
            # The notifier's queue: pending deliveries whose next attempt is due.
            IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="due"),
            IndexModel(
                [("webhook_id", ASCENDING), *newest_first("created_at")],
                name="webhook_created_at_id",
            ),
        ]
    )


async def _drop_indexes(db: Database, collection: str, names: tuple[str, ...]) -> None:
    existing = {index["name"] async for index in await db[collection].list_indexes()}
    for name in names:
        if name not in existing:
            continue
        try:
            await db[collection].drop_index(name)
        except OperationFailure as exc:
            if exc.code != INDEX_NOT_FOUND:  # another service dropped it first
                raise


async def _ensure_ttl(
    db: Database, collection: str, field: str, name: str, keep: timedelta
) -> None:
    seconds = int(keep.total_seconds())
    try:
        await db[collection].create_indexes(
            [IndexModel([(field, ASCENDING)], name=name, expireAfterSeconds=seconds)]
        )
    except OperationFailure as exc:
        if exc.code != INDEX_OPTIONS_CONFLICT:
            raise
        # The retention setting changed: change the index in place (collMod), as
        # MongoDB's manual advises, instead of dropping and rebuilding it.
        log.info("changing %s.%s to expire after %ss", collection, name, seconds)
        await db.command("collMod", collection, index={"name": name, "expireAfterSeconds": seconds})
