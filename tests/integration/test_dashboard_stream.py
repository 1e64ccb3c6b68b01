"""`GET /devices/{id}/stream` read by a real HTTP client from a served dashboard API.

Readings go through Kafka and the aggregator into MongoDB, as in production;
the stream must push them and the rollup buckets they change, and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aggregator_worker.worker import run as run_aggregator
from aiokafka import AIOKafkaProducer
from dashboard_api.app import create_app
from fastapi import FastAPI
from integration.readings import publish, reading
from integration.served import serving, stream
from integration.workers import running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, bucket_document, bucket_id
from telemetry_common.infra.mongo import RAW, ROLLUPS
from telemetry_common.infra.settings import AggregatorSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(service_env: dict) -> AsyncIterator[tuple[FastAPI, str]]:
    settings = DashboardSettings(**service_env, stream_poll_interval_s=0.1, stream_heartbeat_s=0.5)
    app = create_app(settings)
    async with serving(app) as base:
        yield app, base


def readings_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e.get("event") == "reading"]


def has_rollup(events: list[dict[str, Any]], resolution: str, count: int) -> bool:
    return any(
        e.get("event") == "rollup"
        and e["data"]["resolution"] == resolution
        and e["data"]["sensor_type"] == "temperature_c"
        and e["data"]["count"] == count
        for e in events
    )


async def test_new_readings_and_their_rollups_are_pushed(
    api: tuple[FastAPI, str],
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
) -> None:
    _, base = api
    before = reading({"device_id": "s-1", "ts": "2025-01-15T10:00:00Z", "temperature_c": 20.0})
    later = [
        reading({"device_id": "s-1", "ts": "2025-01-15T10:00:20Z", "temperature_c": 21.0}),
        reading({"device_id": "s-2", "ts": "2025-01-15T10:00:25Z", "temperature_c": 99.0}),
        reading({"device_id": "s-1", "ts": "2025-01-15T10:00:40Z", "temperature_c": 23.0}),
    ]
    aggregator = AggregatorSettings(**service_env, port=free_port())
    async with running(run_aggregator, aggregator), aiohttp.ClientSession() as session:
        await publish(producer, topics.telemetry, [before])

        async def stored() -> bool:
            return await db[RAW].count_documents({"device_id": "s-1"}) == 1

        await eventually(stored)
        async with stream(session, f"{base}/devices/s-1/stream", "watching s-1") as events:
            await publish(producer, topics.telemetry, later)
            # Three readings in the 10:00 minute: the 1m bucket's last update counts 3.
            seen = await events.until(
                lambda seen: len(readings_of(seen)) == 2 and has_rollup(seen, "1m", 3)
            )
    pushed = readings_of(seen)
    assert [(r["ts"], r["metrics"]["temperature_c"]) for r in pushed] == [
        ("2025-01-15T10:00:20.000Z", 21.0),
        ("2025-01-15T10:00:40.000Z", 23.0),
    ]
    assert [e["id"] for e in seen if e.get("event") == "reading"] == [r["event_id"] for r in pushed]
    rollups = [e["data"] for e in seen if e.get("event") == "rollup"]
    assert {r["device_id"] for r in rollups} == {"s-1"}
    assert all("_applied" not in r and "sketch" not in r for r in rollups)


async def test_watchers_of_one_device_share_one_feed_that_stops_with_the_last(
    api: tuple[FastAPI, str], db: AsyncDatabase
) -> None:
    app, base = api
    feeds = app.state.feeds
    url = f"{base}/devices/w-1/stream"
    async with aiohttp.ClientSession() as one, aiohttp.ClientSession() as two:
        greeting = f"watching {url.rsplit('/', 2)[-2]}"
        async with stream(one, url, greeting) as first, stream(two, url, greeting) as second:
            assert feeds.watched() == {"w-1": 2}
            await db[RAW].insert_one(
                {
                    "_id": "w-e1",
                    "project_id": "default",
                    "device_id": "w-1",
                    "ts": datetime(2025, 1, 15, 10, tzinfo=UTC),
                    "received_at": datetime(2025, 1, 15, 10, tzinfo=UTC),
                    "metrics": {"temperature_c": 1.0},
                    "tags": [],
                }
            )
            for events in (first, second):
                seen = await events.until(lambda seen: bool(readings_of(seen)))
                assert [(e["event"], e["id"]) for e in seen if "event" in e] == [
                    ("reading", "w-e1")
                ]
            # A quiet stream still speaks, so proxies keep it open.
            await first.until(lambda seen: {"comment": "keep-alive"} in seen)

    async def stopped() -> bool:
        return feeds.watched() == {}

    await eventually(stopped)


def raw_reading(event_id: str, device_id: str, ts: datetime, metrics: dict) -> dict:
    return {
        "_id": event_id,
        "project_id": "default",
        "device_id": device_id,
        "ts": ts,
        "received_at": ts,
        "metrics": metrics,
        "tags": [],
    }


def folded(values: list[tuple[float, datetime]]) -> dict[str, Any]:
    rollup = Rollup()
    for value, ts in values:
        rollup.add(value, ts)
    return rollup.to_fields()


def rollup_events(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [
        (e["data"]["resolution"], e["data"]["sensor_type"], e["data"]["count"])
        for e in events
        if e.get("event") == "rollup"
    ]


async def test_a_metrics_rollup_is_pushed_when_it_changes_not_when_its_bucket_does(
    api: tuple[FastAPI, str], db: AsyncDatabase
) -> None:
    # Rollups written here as the aggregator stores them (one bucket holding every
    # metric): what the stream pushes of a bucket is the rows that changed.
    _, base = api
    t0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
    first, second = t0 + timedelta(seconds=5), t0 + timedelta(seconds=10)

    def minute_bucket(humidity: list[tuple[float, datetime]]) -> dict[str, Any]:
        metrics = {"temperature_c": folded([(20.0, first)]), "humidity": folded(humidity)}
        return bucket_document(
            project_id=DEFAULT_PROJECT,
            device_id="b-1",
            resolution="1m",
            start=t0,
            metrics=metrics,
            applied={"0": len(humidity)},
            epoch=1,
            now=datetime.now(UTC),
            keep_for=timedelta(days=7),
        )

    url = f"{base}/devices/b-1/stream"
    async with aiohttp.ClientSession() as session, stream(session, url, "watching b-1") as events:
        await db[ROLLUPS].insert_one(minute_bucket([(40.0, first)]))
        await db[RAW].insert_one(
            raw_reading("b-e1", "b-1", first, {"temperature_c": 20.0, "humidity": 40.0})
        )
        seen = await events.until(lambda seen: len(rollup_events(seen)) == 6)
        # 5m and 15m are merged from the minute bucket and pushed with it.
        assert rollup_events(seen) == [
            (resolution, metric, 1)
            for metric in ("humidity", "temperature_c")
            for resolution in ("15m", "1m", "5m")
        ]
        assert all(
            e["data"]["device_id"] == "b-1" and not {"_e", "_applied", "sketch"} & set(e["data"])
            for e in seen
            if e.get("event") == "rollup"
        )
        # A second reading changes the bucket's humidity only.
        await db[ROLLUPS].replace_one(
            {"_id": bucket_id(DEFAULT_PROJECT, "b-1", "1m", t0)},
            minute_bucket([(40.0, first), (42.0, second)]),
        )
        await db[RAW].insert_one(raw_reading("b-e2", "b-1", second, {"humidity": 42.0}))
        seen = await events.until(lambda seen: bool(rollup_events(seen)))
        # Pings come every heartbeat (several polls): after two, a whole one went by
        # and nothing else changed.
        seen += await events.until(lambda seen: seen.count({"comment": "keep-alive"}) == 2)
        assert rollup_events(seen) == [
            ("15m", "humidity", 2),
            ("1m", "humidity", 2),
            ("5m", "humidity", 2),
        ]


async def test_a_bad_device_id_is_a_422(api: tuple[FastAPI, str]) -> None:
    _, base = api
    async with aiohttp.ClientSession() as session, session.get(f"{base}/devices/$x/stream") as bad:
        assert bad.status == 422
        assert (await bad.json())["errors"][0]["field"] == "path.device_id"


async def test_sigterm_ends_open_streams_and_the_process_at_once(
    service_env: dict, tmp_path: Path
) -> None:
    # The real process, as Kubernetes stops it: uvicorn's grace period is 30 s, and
    # an open stream must not hold a rolling restart up for all of it.
    port = free_port()
    env = {
        **os.environ,
        **{name.upper(): str(value) for name, value in service_env.items()},
        "PORT": str(port),
        "STREAM_HEARTBEAT_S": "60",
    }
    log_path = tmp_path / "dashboard.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dashboard_api",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def alert_feed_ready() -> bool:
                try:
                    async with http.get(f"{base}/alerts/stream") as answer:
                        return answer.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(alert_feed_ready)
            async with (
                stream(http, f"{base}/devices/q-1/stream", "watching q-1") as device,
                stream(http, f"{base}/alerts/stream", "watching alerts") as alerts,
            ):
                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # Each stream ends as a complete response (a cut one would raise here),
                # with nothing after the greeting's closing blank line.
                assert await device.response.content.read() == b"\n"
                assert await alerts.response.content.read() == b"\n"
                # uvicorn re-raises SIGTERM once it has shut down cleanly.
                assert await asyncio.wait_for(process.wait(), 30) in (0, -signal.SIGTERM)
                assert time.monotonic() - signalled < 5
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "Application shutdown complete" in log_path.read_text()
