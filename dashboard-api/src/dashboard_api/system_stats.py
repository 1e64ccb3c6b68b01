"""The figures /stats serves, gathered in the background and answered from memory.

Why a snapshot rather than counting per request: collection sizes are metadata
on a real mongod, but the wire server used locally scans for
``estimated_document_count`` (3.8 s at 5,000,000 readings), and consumer lag
and the DLQ size are round trips to Kafka. Gathered every STATS_REFRESH_S by
one task, however many dashboards poll, a request costs a dict copy, and the
body says how old its figures are (``as_of``). Counters kept by the writers
would be exact at every instant, but every writer (two workers, their replays
after a crash, TTL deletions by MongoDB itself) would have to keep them right;
a few seconds of age is what an operator's overview can afford.

A project's own figures (what its keys see) are counted with its id, so they
cost a count per collection: gathered the first time a project asks, then
refreshed with the rest while it keeps asking (``PROJECT_KEPT_S``). The Kafka
figures are the installation's: a project's answer leaves them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Gauge
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from telemetry_common.api_errors import ApiError
from telemetry_common.kafka.offsets import KafkaOffsets
from telemetry_common.mongo import ALERTS, DEVICES, RAW, ROLLUPS
from telemetry_common.settings import DashboardSettings
from telemetry_common.timefmt import iso_z, utcnow

log = logging.getLogger(__name__)

# Active alerts have no metadata count: they are counted on the (status,
# created_at, _id) index, stopping at this many keys, so a fleet in an alert
# storm costs a bounded scan, and the answer says "at least".
ACTIVE_ALERTS_CAP = 10_000
# How long a request made before the first snapshot waits for it.
FIRST_SNAPSHOT_WAIT_S = 10.0
# Kafka figures not in by then are left out of this snapshot (a broker that
# does not answer must not hold the MongoDB figures back).
KAFKA_WAIT_S = 5.0
# The ingest rate is an average over this long: steadier than one refresh's
# worth, still quick to show a stop.
RATE_WINDOW_S = 60.0
# A project's figures stop being refreshed this long after it last asked.
PROJECT_KEPT_S = 600.0
KAFKA_UNKNOWN: dict[str, Any] = {
    "kafka_reachable": False,
    "ingest_rate_per_s": None,
    "consumer_lag": None,
    "dlq_size": None,
}


class StatsSnapshot:
    def __init__(self, db: AsyncDatabase, settings: DashboardSettings, registry: CollectorRegistry):
        self._db = db
        self._settings = settings
        self._groups = [g for g in settings.stats_consumer_groups.split(",") if g]
        self._offsets: KafkaOffsets | None = None
        self._body: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # (when, records ever written to the telemetry topic), oldest first, for
        # RATE_WINDOW_S: the ingest rate is their growth over that window.
        self._written: deque[tuple[float, int]] = deque()
        self._age = Gauge(
            "dashboard_stats_snapshot_age_seconds",
            "Age of the figures /stats serves",
            registry=registry,
        )
        self._age.set_function(self._age_s)
        self._gathered_at = 0.0
        # Project id -> (its latest figures, when it last asked).
        self._projects: dict[str, tuple[dict[str, Any], float]] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_forever(), name="stats-snapshot")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_kafka()

    async def current(self) -> dict[str, Any]:
        """The latest figures; 503 when none could be gathered yet (MongoDB down since start)."""
        if self._body is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), FIRST_SNAPSHOT_WAIT_S)
        if self._body is None:
            raise ApiError(
                503, "mongo", "figures not gathered yet; retry later", headers={"Retry-After": "5"}
            )
        return self._body

    async def for_project(self, project_id: str) -> dict[str, Any]:
        """One project's figures, the Kafka ones left out; counted now the first time."""
        kept = self._projects.get(project_id)
        body = kept[0] if kept is not None else await self._gather_project(project_id)
        self._projects[project_id] = (body, time.monotonic())
        return body

    async def _gather_project(self, project_id: str) -> dict[str, Any]:
        as_of = iso_z(utcnow())
        return {
            **await self._stored_figures(project_id),
            "as_of": as_of,
            "generated_at": as_of,
            "refresh_interval_s": self._settings.stats_refresh_s,
            **KAFKA_UNKNOWN,
        }

    async def _refresh_projects(self) -> None:
        now = time.monotonic()
        for project_id, (_, asked) in list(self._projects.items()):
            if now - asked > PROJECT_KEPT_S:
                del self._projects[project_id]
            else:
                self._projects[project_id] = (await self._gather_project(project_id), asked)

    def _age_s(self) -> float:
        return time.monotonic() - self._gathered_at if self._body is not None else 0.0

    async def _refresh_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self._body = await self._gather()
                self._gathered_at = time.monotonic()
                self._ready.set()
                await self._refresh_projects()
            except PyMongoError as exc:
                # The last figures stay served, their as_of saying how old they are.
                log.warning("stats snapshot: MongoDB unavailable: %s", exc)
            # Never busier than half the time: where counting is slow (the wire
            # server scans), the snapshot must not take the database from the
            # queries it exists to spare.
            took = time.monotonic() - started
            await asyncio.sleep(max(self._settings.stats_refresh_s, took))

    async def _gather(self) -> dict[str, Any]:
        as_of = iso_z(utcnow())
        # Side by side: a slow or absent Kafka neither delays nor fails the MongoDB figures.
        stored, streamed = await asyncio.gather(self._stored_figures(), self._kafka_figures())
        return {
            **stored,
            "as_of": as_of,
            "generated_at": as_of,
            "refresh_interval_s": self._settings.stats_refresh_s,
            **streamed,
        }

    async def _stored_figures(self, project_id: str | None = None) -> dict[str, Any]:
        """The installation's figures, or one project's."""
        if project_id is not None:
            return await self._project_figures(project_id)
        active = await self._db[ALERTS].count_documents(
            {"status": "active"}, limit=ACTIVE_ALERTS_CAP
        )
        return {
            "total_readings": await self._db[RAW].estimated_document_count(),
            # Bucket documents, not the per-metric rows the listings serve: rows are
            # not counted in any metadata, and counting them would read every bucket.
            "total_aggregates": await self._db[ROLLUPS].estimated_document_count(),
            "total_alerts": await self._db[ALERTS].estimated_document_count(),
            "total_devices": await self._db[DEVICES].estimated_document_count(),
            "active_alerts": active,
            "active_alerts_capped": active >= ACTIVE_ALERTS_CAP,
        }

    async def _project_figures(self, project_id: str) -> dict[str, Any]:
        mine = {"project_id": project_id}
        active = await self._db[ALERTS].count_documents(
            {**mine, "status": "active"}, limit=ACTIVE_ALERTS_CAP
        )
        return {
            "total_readings": await self._db[RAW].count_documents(mine),
            "total_aggregates": await self._db[ROLLUPS].count_documents(mine),
            "total_alerts": await self._db[ALERTS].count_documents(mine),
            "total_devices": await self._db[DEVICES].count_documents(mine),
            "active_alerts": active,
            "active_alerts_capped": active >= ACTIVE_ALERTS_CAP,
        }

    async def _kafka_figures(self) -> dict[str, Any]:
        try:
            written, lag, dlq_size = await asyncio.wait_for(self._offsets_now(), KAFKA_WAIT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("stats snapshot: Kafka unavailable: %s", exc)
            await self._close_kafka()  # reconnect from scratch next time
            self._written.clear()
            return KAFKA_UNKNOWN
        return {
            "kafka_reachable": True,
            "ingest_rate_per_s": self._rate(time.monotonic(), written),
            "consumer_lag": lag,
            "dlq_size": dlq_size,
        }

    def _rate(self, now: float, written: int) -> float | None:
        self._written.append((now, written))
        while now - self._written[0][0] > RATE_WINDOW_S:
            self._written.popleft()
        since, before = self._written[0]
        return (written - before) / (now - since) if now > since else None

    async def _offsets_now(self) -> tuple[int, dict[str, int], int]:
        if self._offsets is None:
            offsets = KafkaOffsets(self._settings.kafka_bootstrap_servers)
            await offsets.start()
            self._offsets = offsets
        topic = self._settings.telemetry_topic
        written = sum((await self._offsets.next_offsets(topic)).values())
        lag = {group: await self._offsets.lag(group, topic) for group in self._groups}
        return written, lag, await self._offsets.size(self._settings.dlq_topic)

    async def _close_kafka(self) -> None:
        offsets, self._offsets = self._offsets, None
        if offsets is not None:
            with contextlib.suppress(KafkaError):
                await offsets.close()
