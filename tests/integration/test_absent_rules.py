"""Absent rules on real Kafka and MongoDB: a device that stops reporting is flagged by the
alerts worker's timer, once, across restarts, and not while the worker is behind.

Silence is judged on when ingestion-api received readings (the records' CreateTime)
against how far the worker has read each partition, so the lag test produces records
stamped as received over the last ten minutes, as a worker ten minutes behind meets them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aggregator_worker.worker import run as run_aggregator
from aiokafka import AIOKafkaProducer
from alerts_worker.worker import run as run_alerts
from dashboard_api.app import create_app
from integration.readings import reading
from integration.served import serving
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.infra.mongo import ALERT_RULES, ALERTS
from telemetry_common.infra.settings import AggregatorSettings, AlertsSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration


def beat(device_id: str, at: datetime) -> Reading:
    return reading({"device_id": device_id, "ts": iso_z(at), "temperature_c": 21.5})


async def send(
    producer: AIOKafkaProducer, topic: str, device_id: str, received: datetime | None = None
) -> None:
    """A reading as ingestion-api publishes it, received now or at ``received``."""
    at = received or datetime.now(UTC)
    await producer.send_and_wait(
        topic,
        beat(device_id, at).to_kafka_value(),
        key=device_id.encode(),
        timestamp_ms=int(at.timestamp() * 1000),
    )


async def add_absent_rule(db: AsyncDatabase, silence: str, **fields: Any) -> str:
    rule_id = "r-offline"
    await db[ALERT_RULES].insert_one(
        {
            "_id": rule_id,
            "project_id": DEFAULT_PROJECT,
            "name": "Device offline",
            "kind": "absent",
            "metric": None,
            "for": silence,
            "scope": "all",
            "severity": "critical",
            "enabled": True,
            "builtin": False,
            # Long before the readings: a silence counts from the last reading.
            "created_at": datetime.now(UTC) - timedelta(days=1),
            **fields,
        }
    )
    return rule_id


def settings(service_env: dict[str, Any], **overrides: Any) -> AlertsSettings:
    return AlertsSettings(
        **service_env,
        port=free_port(),
        consumer_group="alerts",
        rules_refresh_s=0.2,
        **overrides,
    )


async def alerts_of(db: AsyncDatabase, device_id: str) -> list[dict[str, Any]]:
    return await db[ALERTS].find({"device_id": device_id}).sort("fired_at", 1).to_list()


async def announced(bootstrap_servers: str, topic: str, expected: int) -> Counter[tuple[str, str]]:
    records = await read_topic(bootstrap_servers, topic, expected, timeout_s=5)
    bodies = [orjson.loads(r.value) for r in records]
    return Counter((b["device_id"], b["transition"]) for b in bodies)


async def test_silent_device_flagged_within_its_duration_and_resolved_by_its_next_reading(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    await add_absent_rule(db, "3s")
    async with running(run_alerts, settings(service_env)):
        await send(producer, topics.telemetry, "quiet-1")
        last_heard = time.monotonic()

        async def keep_talking() -> None:
            while True:
                await send(producer, topics.telemetry, "chatty-1")
                await asyncio.sleep(0.5)

        talker = asyncio.create_task(keep_talking())
        try:

            async def flagged() -> bool:
                return bool(await alerts_of(db, "quiet-1"))

            await eventually(flagged, timeout_s=20, interval_s=0.1)
            flagged_after = time.monotonic() - last_heard
            await asyncio.sleep(2)  # chatty-1 keeps reporting past its own 3 s
        finally:
            talker.cancel()
        assert 2.9 <= flagged_after <= 3 + 5
        [alert] = await alerts_of(db, "quiet-1")
        assert (alert["status"], alert["alert_type"], alert["severity"]) == (
            "active",
            "device_offline",
            "critical",
        )
        assert alert["fired_at"] == alert["timestamp"] + timedelta(seconds=3)
        assert await alerts_of(db, "chatty-1") == []

        await send(producer, topics.telemetry, "quiet-1")

        async def resolved() -> bool:
            [alert] = await alerts_of(db, "quiet-1")
            return alert["status"] == "resolved"

        await eventually(resolved, timeout_s=10, interval_s=0.1)
        [alert] = await alerts_of(db, "quiet-1")
        assert alert["resolved_reason"] == "reported"
    assert await announced(service_env["kafka_bootstrap_servers"], topics.alerts, 2) == {
        ("quiet-1", "fired"): 1,
        ("quiet-1", "resolved"): 1,
    }


async def test_restart_during_a_silence_neither_fires_it_twice_nor_forgets_it(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    await add_absent_rule(db, "4s")
    async with running(run_alerts, settings(service_env)) as registry:
        await send(producer, topics.telemetry, "r-1")
        await send(producer, topics.telemetry, "r-2")

        async def evaluated() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 2

        await eventually(evaluated, timeout_s=20)
    # Stopped 1 to 2 s into the silence; the next worker must fire it all the same.
    async with running(run_alerts, settings(service_env)):

        async def both_flagged() -> bool:
            return len(await db[ALERTS].find({"status": "active"}).to_list()) == 2

        await eventually(both_flagged, timeout_s=20, interval_s=0.1)
    # Restarted while the alerts are open, and again: no second alert for either silence.
    for _ in range(2):
        async with running(run_alerts, settings(service_env)):
            await asyncio.sleep(3)
    assert [a["status"] for a in await alerts_of(db, "r-1")] == ["active"]
    assert [a["status"] for a in await alerts_of(db, "r-2")] == ["active"]
    async with running(run_alerts, settings(service_env)):
        await send(producer, topics.telemetry, "r-1")

        async def r1_resolved() -> bool:
            return [a["status"] for a in await alerts_of(db, "r-1")] == ["resolved"]

        await eventually(r1_resolved, timeout_s=20, interval_s=0.1)
    assert await announced(service_env["kafka_bootstrap_servers"], topics.alerts, 3) == {
        ("r-1", "fired"): 1,
        ("r-2", "fired"): 1,
        ("r-1", "resolved"): 1,
    }


async def test_a_worker_ten_minutes_behind_flags_only_the_device_that_stopped(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    """Ten minutes of readings wait in Kafka when the worker starts: every device
    reported every 20 s, but `gone` stopped five minutes ago. Read one record per
    batch, the backlog takes the worker several ticks, each judging what it has read."""
    await add_absent_rule(db, "1m")
    now = datetime.now(UTC)
    devices = [f"fleet-{d}" for d in range(100)]
    sent = 0
    for step in range(30):
        received = now - timedelta(seconds=600 - 20 * step)
        for device in devices:
            await send(producer, topics.telemetry, device, received)
            sent += 1
        if received < now - timedelta(minutes=5):
            await send(producer, topics.telemetry, "gone", received)
            sent += 1
    last_of_gone = max(now - timedelta(seconds=600 - 20 * s) for s in range(30) if s < 15)
    async with running(run_alerts, settings(service_env, consumer_max_records=1)) as registry:

        async def caught_up() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == sent

        started = time.monotonic()
        await eventually(caught_up, timeout_s=120)
        backlog_s = time.monotonic() - started

        async def gone_flagged() -> bool:
            return bool(await alerts_of(db, "gone"))

        await eventually(gone_flagged, timeout_s=20, interval_s=0.1)
        await asyncio.sleep(2)  # a tick or two after catching up
    # The test only means something if the worker judged while still behind.
    assert backlog_s > 1.5, f"the backlog took {backlog_s:.1f} s: no tick met the worker behind"
    [alert] = await alerts_of(db, "gone")
    # Stored to the millisecond.
    assert abs(alert["timestamp"] - last_of_gone) < timedelta(milliseconds=2)
    assert alert["fired_at"] == alert["timestamp"] + timedelta(minutes=1)
    assert await db[ALERTS].count_documents({"device_id": {"$ne": "gone"}}) == 0


async def test_the_device_list_shows_who_is_offline_and_since_when(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    await add_absent_rule(db, "2s")
    dashboard = create_app(DashboardSettings(**service_env))
    async with (
        running(run_aggregator, AggregatorSettings(**service_env, port=free_port())),
        running(run_alerts, settings(service_env)),
        serving(dashboard) as base,
        aiohttp.ClientSession(base_url=base) as http,
    ):

        async def listed(status: str | None = None) -> dict[str, dict[str, Any]]:
            params = {} if status is None else {"status": status}
            async with http.get("/devices", params=params) as response:
                assert response.status == 200, await response.text()
                return {d["device_id"]: d for d in (await response.json())["data"]}

        await send(producer, topics.telemetry, "lamp-1")
        await send(producer, topics.telemetry, "lamp-2")

        async def lamp1_offline() -> bool:
            await send(producer, topics.telemetry, "lamp-2")
            return "lamp-1" in await listed("offline")

        await eventually(lamp1_offline, timeout_s=20, interval_s=0.5)
        devices = await listed()
        assert (devices["lamp-1"]["status"], devices["lamp-2"]["status"]) == ("offline", "online")
        assert devices["lamp-1"]["offline_since"] is not None
        assert devices["lamp-2"]["offline_since"] is None
        assert list(await listed("online")) == ["lamp-2"]

        await send(producer, topics.telemetry, "lamp-1")

        async def lamp1_back() -> bool:
            await send(producer, topics.telemetry, "lamp-2")
            return await listed("offline") == {}

        await eventually(lamp1_back, timeout_s=20, interval_s=0.5)
        assert (await listed())["lamp-1"]["status"] == "online"


async def test_a_rule_made_after_a_device_fell_silent_flags_it_from_the_rules_creation(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    async with running(run_alerts, settings(service_env)) as registry:
        await send(producer, topics.telemetry, "before-1")

        async def evaluated() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 1

        await eventually(evaluated, timeout_s=20)
        created = datetime.now(UTC)
        await add_absent_rule(db, "2s", created_at=created)

        async def flagged() -> bool:
            return bool(await alerts_of(db, "before-1"))

        await eventually(flagged, timeout_s=20, interval_s=0.1)
    [alert] = await alerts_of(db, "before-1")
    assert abs(alert["timestamp"] - created) < timedelta(milliseconds=2)
    assert alert["fired_at"] == alert["timestamp"] + timedelta(seconds=2)
