"""Where a transition becomes deliveries: one document per (webhook, notification).

This is the only write made before the Kafka offset is committed, and it is
idempotent: ``_id`` = "<webhook_id>:<notification_id>" is inserted once
(``$setOnInsert``), so a replayed or rebalanced alerts.triggered record creates
nothing new and never sends twice. The delivery keeps the exact body, so every
retry sends (and signs) the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord
from pymongo import UpdateOne
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import to_utc_ms
from telemetry_common.infra.mongo import WEBHOOK_DELIVERIES, WEBHOOKS, Database

from alerts_worker.documents import Announced, DeliveryDocument, DeliveryStatus

PENDING: DeliveryStatus = "pending"
DELIVERED: DeliveryStatus = "delivered"
FAILED: DeliveryStatus = "failed"
CANCELLED: DeliveryStatus = "cancelled"
TRANSITIONS = ("fired", "resolved")


@dataclass(frozen=True, slots=True)
class Notification:
    announced: Announced
    # The message as published: a delivery sends these bytes, signed.
    body: bytes
    # When alerts.triggered got it: a webhook gets transitions published after it was created.
    published_at: datetime


def decode_notification(record: ConsumerRecord) -> Notification | None:
    """The transition a record announces; None for an alert event of the first version's kind
    (no ``transition``), which has nothing to notify. Anything else malformed raises
    ValueError and goes to the dead-letter topic."""
    event = orjson.loads(record.value)
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    if "transition" not in event and "notification_id" not in event:
        return None
    strings = ("notification_id", "alert_id", "device_id", "severity", "transition")
    for name in strings:
        if not isinstance(event.get(name), str) or not event[name]:
            raise ValueError(f"{name} missing or not a string")
    if event["transition"] not in TRANSITIONS:
        raise ValueError(f"transition must be one of {', '.join(TRANSITIONS)}")
    rule_id = event.get("rule_id")
    project_id = event.get("project_id", DEFAULT_PROJECT)
    if not isinstance(project_id, str) or not project_id:
        raise ValueError("project_id not a string")
    announced: Announced = {
        "notification_id": event["notification_id"],
        "alert_id": event["alert_id"],
        # Alerts announced before projects carry none: the default project's.
        "project_id": project_id,
        "device_id": event["device_id"],
        "severity": event["severity"],
        "transition": event["transition"],
        "rule_id": rule_id if isinstance(rule_id, str) else None,
    }
    return Notification(
        announced=announced,
        body=record.value,
        published_at=to_utc_ms(datetime.fromtimestamp(record.timestamp / 1000, UTC)),
    )


def matches(webhook: dict[str, Any], notification: Notification) -> bool:
    """Whether the webhook wants this transition: of its project, created before it, and
    every filter agrees.

    The creation bound is what keeps a replay (a new consumer group, a reset
    offset) from flooding a webhook registered today with last week's alerts.
    """
    announced = notification.announced
    if webhook.get("project_id", DEFAULT_PROJECT) != announced["project_id"]:
        return False
    if webhook["created_at"] > notification.published_at:
        return False
    for field, value in (
        ("severity", announced["severity"]),
        ("device_ids", announced["device_id"]),
        ("rule_ids", announced["rule_id"]),
    ):
        wanted = webhook.get(field)
        if wanted and value not in wanted:
            return False
    return True


def delivery_id(webhook_id: str, notification_id: str) -> str:
    return f"{webhook_id}:{notification_id}"


def delivery_document(
    webhook: Mapping[str, Any], notification: Notification, now: datetime
) -> DeliveryDocument:
    return {
        "webhook_id": webhook["_id"],
        **notification.announced,
        "url": webhook["url"],
        "body": notification.body.decode(),
        "status": PENDING,
        "attempt_count": 0,
        "attempts": [],
        "next_attempt_at": now,
        "created_at": now,
        "delivered_at": None,
        "last_error": None,
    }


async def record_deliveries(db: Database, notifications: list[Notification], now: datetime) -> int:
    """Record a delivery for each matching (webhook, notification); return how many are new."""
    if not notifications:
        return 0
    webhooks = [w async for w in db[WEBHOOKS].find({}, {"secret": 0})]
    writes = [
        UpdateOne(
            {"_id": delivery_id(webhook["_id"], n.announced["notification_id"])},
            {"$setOnInsert": delivery_document(webhook, n, now)},
            upsert=True,
        )
        for n in notifications
        for webhook in webhooks
        if matches(webhook, n)
    ]
    if not writes:
        return 0
    result = await db[WEBHOOK_DELIVERIES].bulk_write(writes, ordered=False)
    return result.upserted_count
