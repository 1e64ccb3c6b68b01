"""MongoDB: the client every service builds, the collections and their indexes.

Everything reaches MongoDB through ``MONGO_URL`` only, so the wire server used
locally and in tests and a real mongod are interchangeable.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

log = logging.getLogger(__name__)

RAW = "telemetry_raw"
ROLLUPS = "aggregated_data"
ALERTS = "alerts"
DEVICES = "devices"


def connect(url: str, app_name: str) -> AsyncMongoClient:
    # tz_aware: dates come back as aware UTC datetimes, never naive ones that a
    # later .isoformat() would print without an offset.
    return AsyncMongoClient(
        url,
        tz_aware=True,
        appname=app_name,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
    )


async def ensure_indexes(db: AsyncDatabase, raw_retention: timedelta) -> None:
    """Create the indexes the queries and the idempotent writes rely on (no-op when present)."""
    await db[RAW].create_indexes(
        [
            IndexModel([("device_id", ASCENDING), ("ts", DESCENDING)], name="device_ts"),
            IndexModel([("tags", ASCENDING), ("ts", DESCENDING)], name="tags_ts"),
            IndexModel([("ts", DESCENDING)], name="ts"),
            # Retention counts from arrival, not from the reading's own time, so a
            # backfill of old history is kept for the full period like any reading.
            IndexModel(
                [("received_at", ASCENDING)],
                name="received_at_ttl",
                expireAfterSeconds=int(raw_retention.total_seconds()),
            ),
        ]
    )
    await db[ROLLUPS].create_indexes(
        [
            IndexModel(
                [
                    ("device_id", ASCENDING),
                    ("sensor_type", ASCENDING),
                    ("resolution", ASCENDING),
                    ("timestamp", ASCENDING),
                ],
                name="bucket_unique",
                unique=True,
            ),
            IndexModel([("device_id", ASCENDING), ("timestamp", DESCENDING)], name="device_ts"),
            IndexModel([("timestamp", DESCENDING)], name="ts"),
            # Each bucket carries its own expiry (resolutions differ in retention);
            # a bucket kept forever has no expire_at and is never touched.
            IndexModel([("expire_at", ASCENDING)], name="expire_at_ttl", expireAfterSeconds=0),
        ]
    )
    await db[ALERTS].create_indexes(
        [
            IndexModel([("created_at", DESCENDING)], name="created_at"),
            IndexModel(
                [("device_id", ASCENDING), ("created_at", DESCENDING)], name="device_created_at"
            ),
            IndexModel([("status", ASCENDING), ("created_at", DESCENDING)], name="status_created"),
        ]
    )
    await db[DEVICES].create_indexes([IndexModel([("last_seen", DESCENDING)], name="last_seen")])
