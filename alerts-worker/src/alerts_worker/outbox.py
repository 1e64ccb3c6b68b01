"""Where recorded transitions are announced: the outbox, published to alerts.triggered once.

Each transition is first recorded with ``notified: false`` (``store.py``), then
published and marked. A crash between the publish and the mark would publish it
again after the restart; so a transition left over from an earlier attempt (one
the batch at hand did not record first, even if it computed it again) is looked
for on alerts.triggered first, from shortly before it was recorded, and only
published if it is not there. With that, a replay yields one message per
transition; receivers can still drop a repeat by ``notification_id`` (a message
whose send timed out, yet landed, is the one case left).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.infra.kafka.producer import RenewableProducer
from telemetry_common.infra.mongo import ALERTS, Database

from alerts_worker.documents import Acknowledgement
from alerts_worker.store import ACK_FIELDS, ALERT_OUTBOX

# How far before a left-over transition was recorded its message is looked for:
# the broker stamps a message when the producer sent it, after the record, but
# the two clocks may differ a little.
CLOCK_SLACK = timedelta(seconds=30)


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def notification(doc: Mapping[str, Any], acknowledged: Acknowledgement) -> bytes:
    """The alerts.triggered message: the alert's fields and the transition."""
    body = {
        **doc["alert"],
        **acknowledged,
        "transition": doc["transition"],
        "transition_at": doc["transition_at"],
        "notification_id": doc["_id"],
    }
    return orjson.dumps(body, default=_iso, option=orjson.OPT_PASSTHROUGH_DATETIME)


async def published_since(bootstrap_servers: str, topic: str, since: datetime) -> set[str]:
    """notification_ids of the messages on ``topic`` stamped at ``since`` or later."""
    # Subscribed without a group: every partition of the topic is this consumer's.
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = list(consumer.assignment())
        starts = await consumer.offsets_for_times(
            {tp: int(since.timestamp() * 1000) for tp in partitions}
        )
        ends = await consumer.end_offsets(partitions)
        found: set[str] = set()
        for tp in partitions:
            start = starts.get(tp)
            if start is None:
                continue  # nothing on this partition since then
            consumer.seek(tp, start.offset)
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    found.add(orjson.loads(record.value).get("notification_id"))
        return found
    finally:
        await consumer.stop()


class Outbox:
    def __init__(
        self, db: Database, producer: RenewableProducer, topic: str, bootstrap_servers: str
    ):
        self._db = db
        self._producer = producer
        self._topic = topic
        self._bootstrap_servers = bootstrap_servers

    async def publish_pending(
        self, partitions: Collection[int], newly_recorded: Collection[str]
    ) -> int:
        """Publish the unannounced transitions of these partitions, then mark them.

        ``newly_recorded``: notification ids the batch at hand recorded first (surely not sent yet).
        """
        outbox = self._db[ALERT_OUTBOX]
        pending = [
            doc
            async for doc in outbox.find(
                {"notified": False, "partition": {"$in": list(partitions)}}
            )
        ]
        leftovers = [doc for doc in pending if doc["_id"] not in newly_recorded]
        if leftovers:
            since = min(doc["created_at"] for doc in leftovers) - CLOCK_SLACK
            sent = await published_since(self._bootstrap_servers, self._topic, since)
            pending = [doc for doc in pending if doc["_id"] not in sent]
            await outbox.update_many(
                {"_id": {"$in": [d["_id"] for d in leftovers if d["_id"] in sent]}},
                {"$set": {"notified": True}},
            )
        if not pending:
            return 0
        # One device's transitions in the order they happened (one partition keeps it).
        pending.sort(key=lambda d: (d["transition_at"], d["transition"] == "resolved"))
        # Acknowledgements are the person's, made after the transition was recorded.
        acks: dict[str, Acknowledgement] = {
            doc["_id"]: {
                "acknowledged_at": doc.get("acknowledged_at"),
                "acknowledged_by": doc.get("acknowledged_by"),
            }
            async for doc in self._db[ALERTS].find(
                {"_id": {"$in": list({d["alert_id"] for d in pending})}},
                dict.fromkeys(ACK_FIELDS, 1),
            )
        }
        sends = [
            await self._producer.send(
                self._topic,
                key=doc["device_id"].encode(),
                value=notification(doc, acks.get(doc["alert_id"], ACK_FIELDS)),
            )
            for doc in pending
        ]
        await asyncio.gather(*sends)
        await outbox.update_many(
            {"_id": {"$in": [doc["_id"] for doc in pending]}}, {"$set": {"notified": True}}
        )
        return len(pending)
