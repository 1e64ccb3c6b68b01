"""Live feeds of one device's new readings and rollup updates, shared by its watchers.

MongoDB is polled, not watched through a change stream: change streams need a
replica set, and the compose deployment runs a standalone mongod (the wire
server used in tests has them, which would hide the gap). One poller per
watched device, however many clients watch it, each poll an index range:
readings after the newest one pushed on (project_id, device_id, ts, _id), and the rollup
buckets those readings fall in by their ``_id``s. A reading is "new" by its own
time: a late reading older than one already pushed is not pushed (the listings
have it), and only the buckets of pushed readings are watched. A bucket holds
every metric of the device; a metric's row is pushed when its own figures
changed, not when another metric of its bucket did. A bucket of a resolution
merged at read time (5m from 1m) is merged from its window's stored buckets
at each poll, as the listings merge it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import PyMongoError
from telemetry_common.domain.resolutions import RollupPlan, bucket_start
from telemetry_common.domain.rollup_layout import (
    ROW_FIELDS,
    bucket_id,
    merged_bucket,
    metric_rows,
    parse_bucket_id,
    scoped_id,
)
from telemetry_common.infra.mongo import RAW, ROLLUPS, Database

from dashboard_api.paging import Position, after
from dashboard_api.serialize import as_served

log = logging.getLogger(__name__)

# Readings read per poll; a burst beyond it is read over the next polls.
POLL_BATCH = 500
# A watcher whose client reads slower than this many events behind is dropped
# (its stream ends; an EventSource reconnects) instead of growing memory.
WATCHER_BACKLOG = 2000
# How many polls a reading's buckets are re-read after it: the aggregator writes
# rollups just after raw readings, and a bucket may change again with the next ones.
BUCKET_WATCH_POLLS = 10


@dataclass(frozen=True)
class Event:
    kind: str  # "reading" or "rollup"
    data: dict[str, Any]


@dataclass
class _Feed:
    project_id: str
    device_id: str
    position: Position | None
    watchers: set[Watcher] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    # Its last watcher left: it ends after the read in progress. Only a sleeping
    # poller is cancelled, never one inside a driver call (a cancelled pymongo
    # operation can leave the client's pool deadlocked, every request waiting).
    stopping: bool = False
    sleeping: bool = False
    # bucket _id -> polls left to re-read it; row _id -> (bucket _id, figures pushed).
    buckets: dict[str, int] = field(default_factory=dict)
    versions: dict[str, tuple[str, tuple[Any, ...]]] = field(default_factory=dict)


@dataclass(eq=False)
class Watcher:
    # The device's id within its project (``rollup_layout.scoped_id``).
    feed_key: str
    # None in the queue means the feed ended for this watcher.
    queue: asyncio.Queue[Event | None] = field(
        default_factory=lambda: asyncio.Queue(WATCHER_BACKLOG)
    )


class DeviceFeeds:
    def __init__(self, db: Database, interval_s: float, plan: RollupPlan):
        self._db = db
        self._interval_s = interval_s
        self._plan = plan
        self._feeds: dict[str, _Feed] = {}

    async def subscribe(self, project_id: str, device_id: str) -> Watcher:
        """A watcher of the device's events from now on; pair with ``unsubscribe``."""
        key = scoped_id(project_id, device_id)
        feed = self._feeds.get(key)
        if feed is None:
            # Start at the newest reading stored: the stream shows what comes next.
            position = await self._newest(project_id, device_id)
            feed = self._feeds.get(key)  # another watcher may have come meanwhile
            if feed is None:
                feed = self._feeds[key] = _Feed(project_id, device_id, position)
                # A fresh context: the poller outlives the request that started it,
                # so its log lines must not carry that request's id.
                feed.task = asyncio.create_task(
                    self._poll(feed), name=f"feed:{key}", context=contextvars.Context()
                )
                feed.task.add_done_callback(functools.partial(self._ended, feed))
        watcher = Watcher(key)
        feed.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        feed = self._feeds.get(watcher.feed_key)
        if feed is None:
            return
        feed.watchers.discard(watcher)
        if not feed.watchers:
            del self._feeds[watcher.feed_key]
            feed.stopping = True
            if feed.sleeping and feed.task is not None:
                feed.task.cancel()

    def watched(self) -> dict[str, int]:
        """Watchers per watched device (by its id within its project)."""
        return {device: len(feed.watchers) for device, feed in self._feeds.items()}

    def close(self) -> None:
        for feed in self._feeds.values():
            if feed.task is not None:
                feed.task.cancel()
            for watcher in feed.watchers:
                end_queue(watcher.queue)
        self._feeds.clear()

    def _ended(self, feed: _Feed, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A poller that crashed ends its watchers' streams rather than leave them
        # waiting on heartbeats for events that never come; they reconnect.
        log.error("live feed of %s stopped", feed.device_id, exc_info=task.exception())
        key = scoped_id(feed.project_id, feed.device_id)
        if self._feeds.get(key) is feed:
            del self._feeds[key]
        for watcher in feed.watchers:
            end_queue(watcher.queue)

    async def _newest(self, project_id: str, device_id: str) -> Position | None:
        newest = await self._db[RAW].find_one(
            {"project_id": project_id, "device_id": device_id},
            sort=[("ts", -1), ("_id", -1)],
            projection={"ts": 1},
        )
        return Position(newest["ts"], newest["_id"]) if newest else None

    async def _poll(self, feed: _Feed) -> None:
        while True:
            events: list[Event] = []
            # Readings, then rollups: a failure of the second keeps the readings
            # read (their position has moved on). MongoDB away: keep the
            # watchers, try again at the next poll.
            for read in (self._new_readings, self._changed_rollups):
                try:
                    events += await read(feed)
                except PyMongoError as exc:
                    log.warning("live feed of %s: %s", feed.device_id, exc)
            for event in events:
                for watcher in list(feed.watchers):
                    if not offer(watcher.queue, event):
                        feed.watchers.discard(watcher)
                        end_queue(watcher.queue)
            if feed.stopping:
                return
            feed.sleeping = True
            try:
                await asyncio.sleep(self._interval_s)
            finally:
                feed.sleeping = False

    async def _new_readings(self, feed: _Feed) -> list[Event]:
        query: dict[str, Any] = {"project_id": feed.project_id, "device_id": feed.device_id}
        if feed.position is not None:
            query.update(after("ts", feed.position, descending=False))
        cursor = self._db[RAW].find(query).sort([("ts", 1), ("_id", 1)]).limit(POLL_BATCH)
        docs = [doc async for doc in cursor]
        for doc in docs:
            for resolution, width in self._plan.served.items():
                start = bucket_start(doc["ts"], width)
                doc_id = bucket_id(feed.project_id, feed.device_id, resolution, start)
                feed.buckets[doc_id] = BUCKET_WATCH_POLLS
        if docs:
            feed.position = Position(docs[-1]["ts"], docs[-1]["_id"])
        return [Event("reading", as_served(doc, "event_id")) for doc in docs]

    async def _buckets(self, feed: _Feed) -> list[dict[str, Any]]:
        """The watched buckets as stored, and those of merged resolutions merged."""
        stored_ids: list[str] = []
        merged: list[tuple[str, str, str, datetime, dict[str, str]]] = []
        for doc_id in feed.buckets:
            project_id, device_id, resolution, window = parse_bucket_id(doc_id)
            source = self._plan.derived.get(resolution)
            if source is None:
                stored_ids.append(doc_id)
                continue
            width = timedelta(seconds=self._plan.served[resolution])
            source_ids = {
                "$gte": bucket_id(project_id, device_id, source, window),
                "$lt": bucket_id(project_id, device_id, source, window + width),
            }
            merged.append((project_id, device_id, resolution, window, source_ids))
        rollups = self._db[ROLLUPS]
        docs = (
            [doc async for doc in rollups.find({"_id": {"$in": stored_ids}})] if stored_ids else []
        )
        if merged:
            ranges = [{"_id": ids} for *_, ids in merged]
            sources = [doc async for doc in rollups.find({"$or": ranges}).sort("_id", 1)]
            for project_id, device_id, resolution, window, ids in merged:
                parts = [d for d in sources if ids["$gte"] <= d["_id"] < ids["$lt"]]
                if parts:
                    docs.append(merged_bucket(project_id, device_id, resolution, window, parts))
        return docs

    async def _changed_rollups(self, feed: _Feed) -> list[Event]:
        if not feed.buckets:
            return []
        rows = [(doc["_id"], row) for doc in await self._buckets(feed) for row in metric_rows(doc)]
        rows.sort(key=lambda pair: pushed_order(pair[1]))
        events = []
        for doc_id, row in rows:
            pushed = (doc_id, tuple(row.get(name) for name in ROW_FIELDS))
            if feed.versions.get(row["_id"]) != pushed:
                feed.versions[row["_id"]] = pushed
                events.append(Event("rollup", as_served(row)))
        for doc_id, polls_left in list(feed.buckets.items()):
            if polls_left <= 1:
                del feed.buckets[doc_id]
            else:
                feed.buckets[doc_id] = polls_left - 1
        feed.versions = {k: v for k, v in feed.versions.items() if v[0] in feed.buckets}
        return events


def pushed_order(row: Mapping[str, Any]) -> tuple[datetime, str]:
    """Rollup events of one poll are pushed oldest bucket first, then in the order of the
    ids of the layout before (``device|metric|resolution|start``), as they always were."""
    return row["timestamp"], f"{row['sensor_type']}|{row['resolution']}|"


def offer(queue: asyncio.Queue[Any], event: Any) -> bool:
    try:
        queue.put_nowait(event)
        return True
    except asyncio.QueueFull:
        return False


def end_queue(queue: asyncio.Queue[Any]) -> None:
    """End a watcher's stream: None in its queue."""
    # A full queue: make room for the end mark, the client reconnects anyway.
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    offer(queue, None)
