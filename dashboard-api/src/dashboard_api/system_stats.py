"""The figures /stats serves, gathered in the background and answered from memory.

Why a snapshot rather than counting per request: collection sizes are metadata
on a real mongod, but the wire server used locally scans for
``estimated_document_count`` (seconds at millions of readings), and consumer lag
and the DLQ size are round trips to Kafka. Gathered every STATS_REFRESH_S by
one task, however many dashboards poll, a request costs a dict copy, and the
body says how old its figures are (``as_of``). Counters kept by the writers
would be exact at every instant, but every writer (two workers, their replays
after a crash, TTL deletions by MongoDB itself) would have to keep them right;
a few seconds of age is what an operator's overview can afford.

A project's own figures (what its keys see) are counted with its id, so they
cost a count per collection (a scan of the project's index keys, seconds for
millions of readings): gathered in the background from the first time a
project asks (a request waits at most ``PROJECT_FIRST_WAIT_S`` for them, then
gets 503 and Retry-After), then refreshed while it keeps asking
(``PROJECT_KEPT_S``), never spending more than a tenth of the time counting
(``PROJECT_BUSY_SHARE``): its ``as_of`` says how old they are. The Kafka
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
from prometheus_client import CollectorRegistry
from pymongo.errors import PyMongoError
from telemetry_common.domain.timefmt import iso_z, utcnow
from telemetry_common.http.api_errors import ApiError
from telemetry_common.infra.background import BackgroundTasks
from telemetry_common.infra.kafka.offsets import KafkaOffsets
from telemetry_common.infra.metrics import Instruments
from telemetry_common.infra.mongo import ALERTS, DEVICES, RAW, ROLLUPS, Database
from telemetry_common.infra.settings import DashboardSettings

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
# How long a request waits for a project's first figures before a 503.
PROJECT_FIRST_WAIT_S = 2.0
# A project's figures are refreshed no sooner than its last gathering took, divided
# by this: counting must not take the database from the queries.
PROJECT_BUSY_SHARE = 0.1
KAFKA_UNKNOWN: dict[str, Any] = {
    "kafka_reachable": False,
    "ingest_rate_per_s": None,
    "consumer_lag": None,
    "dlq_size": None,
}


class StatsSnapshot:
    def __init__(self, db: Database, settings: DashboardSettings, registry: CollectorRegistry):
        on = Instruments(registry)
        self._db = db
        self._settings = settings
        self._groups = [g for g in settings.stats_consumer_groups.split(",") if g]
        self._offsets: KafkaOffsets | None = None
        self._body: dict[str, Any] | None = None
        self._ready = asyncio.Event()
        self._background = BackgroundTasks()
        # (when, records ever written to the telemetry topic), oldest first, for
        # RATE_WINDOW_S: the ingest rate is their growth over that window.
        self._written: deque[tuple[float, int]] = deque()
        self._age = on.gauge(
            "dashboard_stats_snapshot_age_seconds", "Age of the figures /stats serves"
        )
        self._age.set_function(self._age_s)
        self._gathered_at = 0.0
        # Project id -> (its latest figures, None until gathered; when it last asked).
        self._projects: dict[str, tuple[dict[str, Any] | None, float]] = {}
        self._first_gathers: dict[str, asyncio.Task[None]] = {}
        # Project id -> when its figures are next refreshed (monotonic).
        self._project_due: dict[str, float] = {}

    def start(self) -> None:
        self._background.start(self._refresh_forever(), name="stats snapshot")

    async def stop(self) -> None:
        await self._background.stop()
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
        """One project's figures, the Kafka ones left out; 503 while its first are gathered."""
        body, _ = self._projects.get(project_id, (None, 0.0))
        self._projects[project_id] = (body, time.monotonic())
        if body is None:
            first = self._first_gathers.get(project_id)
            if first is None:
                first = self._background.start(
                    self._first_gather(project_id), name=f"stats of {project_id}"
                )
                self._first_gathers[project_id] = first
            with contextlib.suppress(TimeoutError):
                # Shielded: a request that stops waiting leaves the gathering running.
                await asyncio.wait_for(asyncio.shield(first), PROJECT_FIRST_WAIT_S)
            body, _ = self._projects[project_id]
        if body is None:
            raise ApiError(
                503,
                "project_id",
                "the project's figures are being gathered; retry later",
                headers={"Retry-After": "5"},
            )
        return body

    async def _first_gather(self, project_id: str) -> None:
        try:
            await self._refresh_project(project_id)
        except PyMongoError as exc:
            log.warning("stats of project %s: MongoDB unavailable: %s", project_id, exc)
        finally:
            self._first_gathers.pop(project_id, None)

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
        for project_id, (body, asked) in list(self._projects.items()):
            if time.monotonic() - asked > PROJECT_KEPT_S:
                del self._projects[project_id]
                self._project_due.pop(project_id, None)
            elif body is not None and time.monotonic() >= self._project_due.get(project_id, 0):
                # (A project without figures has its first gathering under way.)
                await self._refresh_project(project_id)

    async def _refresh_project(self, project_id: str) -> None:
        started = time.monotonic()
        body = await self._gather_project(project_id)
        now = time.monotonic()
        _, asked = self._projects.get(project_id, (None, now))
        self._projects[project_id] = (body, asked)
        took = now - started
        self._project_due[project_id] = now + max(
            self._settings.stats_refresh_s, took / PROJECT_BUSY_SHARE
        )

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
