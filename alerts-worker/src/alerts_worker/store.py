"""Where alerts are written and announced: idempotent inserts, then alerts.triggered.

An alert document is created once (``_id`` = event id + alert type) with
``notified: false``; it is published to ``alerts.triggered`` and then marked
notified. A crash anywhere in between is repaired by the replay: the insert is
a no-op and the still-unnotified alert is published then. A consumer of
``alerts.triggered`` can drop a repeat by ``alert_id``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.mongo import ALERTS
from telemetry_common.timefmt import iso_z, utcnow

from alerts_worker.rules import Alert


def alert_document(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "event_id": alert.event_id,
        "device_id": alert.device_id,
        "sensor_type": alert.sensor_type,
        "metric": alert.metric,
        "value": alert.value,
        "threshold": alert.threshold,
        "alert_type": alert.alert_type,
        "severity": alert.severity,
        "message": alert.message,
        "timestamp": alert.timestamp,
        "status": "active",
    }


def alert_event(doc: dict[str, Any]) -> bytes:
    """The JSON published to alerts.triggered (the same fields the API serves)."""
    public = {k: v for k, v in doc.items() if k not in ("_id", "notified")}
    for field in ("timestamp", "created_at"):
        public[field] = iso_z(public[field])
    return orjson.dumps(public)


async def record_alerts(db: AsyncDatabase, alerts: list[Alert]) -> list[Alert]:
    """Insert alerts not seen before; return the new ones."""
    if not alerts:
        return []
    now = utcnow()
    result = await db[ALERTS].bulk_write(
        [
            UpdateOne(
                {"_id": alert.alert_id},
                {"$setOnInsert": {**alert_document(alert), "created_at": now, "notified": False}},
                upsert=True,
            )
            for alert in alerts
        ],
        ordered=False,
    )
    return [alerts[index] for index in result.upserted_ids]


async def publish_pending(
    db: AsyncDatabase, producer: AIOKafkaProducer, topic: str, alert_ids: list[str]
) -> int:
    """Publish the batch's alerts not yet announced, then mark them; return how many."""
    if not alert_ids:
        return 0
    pending = [doc async for doc in db[ALERTS].find({"_id": {"$in": alert_ids}, "notified": False})]
    if not pending:
        return 0
    sends = [
        await producer.send(topic, key=doc["device_id"].encode(), value=alert_event(doc))
        for doc in pending
    ]
    await asyncio.gather(*sends)
    await db[ALERTS].update_many(
        {"_id": {"$in": [doc["_id"] for doc in pending]}}, {"$set": {"notified": True}}
    )
    return len(pending)
