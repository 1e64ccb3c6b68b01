"""Unit tests for dashboard_api.live: how a device's feed ends (no server)."""

from __future__ import annotations

import asyncio

from asgi_correlation_id import correlation_id
from dashboard_api.live import DeviceFeeds, Event, Position, _Feed
from telemetry_common.domain.resolutions import DEFAULT_PLAN


class SlowFeeds(DeviceFeeds):
    """Feeds whose reads wait for the test, standing in for driver calls."""

    def __init__(self) -> None:
        super().__init__(db=None, interval_s=0.01, plan=DEFAULT_PLAN)  # type: ignore[arg-type]
        self.reading = asyncio.Event()
        self.release = asyncio.Event()
        self.reads_finished = 0
        self.reads_cancelled = 0
        self.request_id: str | None = None

    async def _newest(self, project_id: str, device_id: str) -> Position | None:
        return None

    async def _new_readings(self, feed: _Feed) -> list[Event]:
        self.request_id = correlation_id.get()
        self.reading.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.reads_cancelled += 1
            raise
        self.reads_finished += 1
        return []

    async def _changed_rollups(self, feed: _Feed) -> list[Event]:
        return []


async def test_the_last_watcher_leaving_mid_read_lets_the_read_finish_then_ends_the_feed() -> None:
    feeds = SlowFeeds()
    watcher = await feeds.subscribe("default", "dev-1")
    task = feeds._feeds["dev-1"].task
    assert task is not None
    await asyncio.wait_for(feeds.reading.wait(), 1)

    feeds.unsubscribe(watcher)
    feeds.release.set()
    await asyncio.wait_for(task, 1)

    assert (feeds.reads_finished, feeds.reads_cancelled) == (1, 0)
    assert not task.cancelled() and feeds.watched() == {}


async def test_the_last_watcher_leaving_while_the_feed_sleeps_ends_it_at_once() -> None:
    feeds = SlowFeeds()
    feeds.release.set()
    watcher = await feeds.subscribe("default", "dev-1")
    feed = feeds._feeds["dev-1"]
    for _ in range(1000):
        if feed.sleeping:
            break
        await asyncio.sleep(0.001)
    assert feed.sleeping

    feeds.unsubscribe(watcher)
    assert feed.task is not None
    await asyncio.wait_for(asyncio.gather(feed.task, return_exceptions=True), 1)
    assert feed.task.cancelled() and feeds.reads_cancelled == 0


async def test_a_feed_logs_without_the_request_id_of_the_stream_that_started_it() -> None:
    # The poller outlives that request and serves other watchers: a grep for the
    # request's id must not find its lines.
    feeds = SlowFeeds()
    feeds.release.set()
    token = correlation_id.set("req-1")
    try:
        watcher = await feeds.subscribe("default", "dev-1")
    finally:
        correlation_id.reset(token)
    await asyncio.wait_for(feeds.reading.wait(), 1)
    feeds.unsubscribe(watcher)
    assert feeds.request_id is None
