"""Alert transitions as they are published, shared by every alert-stream client of this process.

The feed reads alerts.triggered itself rather than polling MongoDB: a transition
is on the topic a few milliseconds after the worker recorded it, where a poll
would add its whole interval (the goal is under 100 ms from the reading's POST
to the SSE client). It is one consumer per dashboard process, outside any
consumer group (every replica must see every transition, and a group would
split the partitions between them), assigned every partition and started at
the end: a stream shows what happens from now on; GET /alerts has the past.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.infra.background import BackgroundTasks
from telemetry_common.infra.metrics import Instruments
from telemetry_common.infra.retry import retrying

from dashboard_api.live import WATCHER_BACKLOG, end_queue, offer

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AlertWatcher:
    project_id: str
    device_id: str | None  # None: every device of the project
    # None in the queue means the feed ended for this watcher.
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(WATCHER_BACKLOG)
    )


class AlertFeed:
    def __init__(self, bootstrap_servers: str, topic: str, registry: CollectorRegistry):
        on = Instruments(registry)
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._watchers: set[AlertWatcher] = set()
        self._background = BackgroundTasks()
        self.ready = asyncio.Event()
        self._delivered = on.counter(
            "dashboard_alert_events_total",
            "Alert transitions read from alerts.triggered by the alert stream",
        )
        self._watching = on.gauge(
            "dashboard_alert_stream_clients", "Connected alert-stream clients"
        )

    def start(self) -> None:
        self._background.start(self._run(), name="alert feed")

    async def stop(self) -> None:
        await self._background.stop()
        for watcher in self._watchers:
            end_queue(watcher.queue)
        self._watchers.clear()

    def subscribe(self, project_id: str, device_id: str | None) -> AlertWatcher:
        watcher = AlertWatcher(project_id, device_id)
        self._watchers.add(watcher)
        self._watching.set(len(self._watchers))
        return watcher

    def unsubscribe(self, watcher: AlertWatcher) -> None:
        self._watchers.discard(watcher)
        self._watching.set(len(self._watchers))

    async def _run(self) -> None:
        # Whatever broke the feed, it reconnects for as long as the API runs.
        def anything(exc: BaseException) -> bool:
            return isinstance(exc, Exception)  # not a cancellation

        async for attempt in retrying("alert feed", retry_on=anything):
            with attempt:
                await self._consume()

    async def _consume(self) -> None:
        # Subscribed without a group: every partition is this consumer's, and a
        # partition added later is picked up with the metadata.
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="dashboard-api-alert-feed",
        )
        await consumer.start()
        try:
            assigned = consumer.assignment()
            if not assigned:
                raise RuntimeError(f"topic {self._topic} has no partitions yet")
            for tp in assigned:  # resolve the end now, so what comes next is seen
                await consumer.position(tp)
            self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        self._dispatch(record.value)
        finally:
            self.ready.clear()
            await consumer.stop()

    def _dispatch(self, value: bytes) -> None:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("alert feed: a message that is not JSON was skipped")
            return
        self._delivered.inc()
        # Alerts announced before projects carry none: the default project's.
        project_id = event.get("project_id", DEFAULT_PROJECT)
        device_id = event.get("device_id")
        for watcher in list(self._watchers):
            if watcher.project_id != project_id:
                continue
            if watcher.device_id is not None and watcher.device_id != device_id:
                continue
            if not offer(watcher.queue, event):
                # Too slow a client: its stream ends (an EventSource reconnects).
                self.unsubscribe(watcher)
                end_queue(watcher.queue)
