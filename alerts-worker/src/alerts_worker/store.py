"""Where evaluation state, alerts and their notifications are written.

A batch is written in this order, each step idempotent, so a crash between any
two is repaired by the replay of the uncommitted records:

0. the event ids seen (a reading sent twice by its device is evaluated once);
1. alert documents (``_id`` = alert_id: inserted on firing, ``$set`` resolved)
   and one outbox document per transition (``_id`` = notification_id,
   ``notified: false``), both keyed by ids the replay computes again;
2. the (rule, device) states, each replaced only if its version is still the one
   read (two owners of a partition during a rebalance cannot both write it);
   their watermarks then make a replay skip the readings already evaluated;
3. the outbox is published to alerts.triggered and marked (``outbox.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DeleteOne, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.kafka.consumer import Consumed
from telemetry_common.mongo import ALERTS
from telemetry_common.reading import Reading
from telemetry_common.versioned import insert_first_copies, replace_versioned, source

from alerts_worker.incidents import Raised, Tracked

ALERT_STATE = "alert_state"
ALERT_OUTBOX = "alert_outbox"
# Event ids seen, so a device's retry of a reading is evaluated once.
ALERT_SEEN = "alert_seen_events"
# A transition is announced within moments, and a retry comes within moments; a
# week covers any outage (alerts.triggered keeps a week too) and keeps both bounded.
KEEP_S = 7 * 86_400
# Fields a person sets on an alert (acknowledging it); the worker never writes them.
ACK_FIELDS = {"acknowledged_at": None, "acknowledged_by": None}


async def ensure_alert_indexes(db: AsyncDatabase) -> None:
    await db[ALERT_STATE].create_indexes([IndexModel([("device_id", ASCENDING)], name="device")])
    await db[ALERT_OUTBOX].create_indexes(
        [
            IndexModel([("notified", ASCENDING), ("partition", ASCENDING)], name="pending"),
            IndexModel(
                [("created_at", ASCENDING)], name="created_at_ttl", expireAfterSeconds=KEEP_S
            ),
        ]
    )
    await db[ALERT_SEEN].create_indexes(
        [IndexModel([("seen_at", ASCENDING)], name="seen_at_ttl", expireAfterSeconds=KEEP_S)]
    )


async def drop_retries(
    db: AsyncDatabase, items: list[Consumed[Reading]], now: datetime
) -> list[Consumed[Reading]]:
    """The batch without second copies of a reading (a device retry, in this batch or
    an earlier one), so that every reading counts once in every k-of-n window."""
    unique: dict[str, Consumed[Reading]] = {}
    for item in items:
        unique.setdefault(item.value.event_id, item)
    docs = [
        {"_id": event_id, "_src": source(item.partition, item.offset), "seen_at": now}
        for event_id, item in unique.items()
    ]
    retried = await insert_first_copies(db[ALERT_SEEN], docs)
    return [item for event_id, item in unique.items() if event_id not in retried]


async def load_states(db: AsyncDatabase, device_ids: Iterable[str]) -> dict[str, Tracked]:
    """Every rule's state for these devices (also of rules since deleted, to resolve them)."""
    cursor = db[ALERT_STATE].find({"device_id": {"$in": list(device_ids)}})
    return {doc["_id"]: Tracked.from_document(doc) async for doc in cursor}


def _alert_write(raised: Raised) -> UpdateOne:
    transition = raised.transition
    alert = transition.alert
    if transition.kind == "fired":
        return UpdateOne(
            {"_id": alert["alert_id"]}, {"$setOnInsert": {**alert, **ACK_FIELDS}}, upsert=True
        )
    resolved = {k: alert[k] for k in ("status", "resolved_at", "resolved_reason")}
    return UpdateOne({"_id": alert["alert_id"]}, {"$set": resolved})


def _outbox_write(raised: Raised, now: datetime) -> UpdateOne:
    transition = raised.transition
    doc = {
        "alert_id": transition.alert["alert_id"],
        "device_id": transition.alert["device_id"],
        "transition": transition.kind,
        "transition_at": transition.at,
        "alert": transition.alert,
        "partition": raised.partition,
        "created_at": now,
        # A silenced transition is recorded as already handled: never published.
        "notified": not transition.notify,
        "silenced": not transition.notify,
    }
    return UpdateOne({"_id": transition.notification_id}, {"$setOnInsert": doc}, upsert=True)


async def record_transitions(db: AsyncDatabase, raised: list[Raised], now: datetime) -> set[str]:
    """Record the transitions; return the notification ids recorded for the first time.

    A transition computed again (a replay of readings whose state was not kept)
    is already in the outbox, and may have been published already.
    """
    if not raised:
        return set()
    # Ordered: an alert fired and resolved within one batch is inserted, then resolved.
    await db[ALERTS].bulk_write([_alert_write(r) for r in raised], ordered=True)
    result = await db[ALERT_OUTBOX].bulk_write(
        [_outbox_write(r, now) for r in raised], ordered=False
    )
    return {raised[index].transition.notification_id for index in result.upserted_ids}


async def write_states(db: AsyncDatabase, tracked: Iterable[Tracked], now: datetime) -> set[str]:
    """Write the changed states, delete those gone idle; return the ids someone else
    changed first.

    An idle state is equivalent to none: a replay of its readings finds no state,
    evaluates them from scratch and decides the same (nothing).
    """
    changed = [t for t in tracked if t.changed]
    replacements: list[tuple[dict[str, Any], int | None]] = [
        (t.to_document(now), t.version) for t in changed if not t.idle
    ]
    conflicts = await replace_versioned(db[ALERT_STATE], replacements)
    deletes = [t for t in changed if t.idle and t.version is not None]
    if deletes:
        result = await db[ALERT_STATE].bulk_write(
            [DeleteOne({"_id": t.doc_id, "_v": t.version}) for t in deletes], ordered=False
        )
        if result.deleted_count < len(deletes):
            # Another owner wrote (or deleted) some first; which ones matters little
            # in so rare a case: all are read and evaluated again.
            conflicts.update(t.doc_id for t in deletes)
    return conflicts
