"""The alerts worker against real Kafka and MongoDB: alerts recorded and announced once."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from alerts_worker.worker import run as run_alerts
from integration.readings import publish, reading
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.mongo import ALERTS
from telemetry_common.settings import AlertsSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration


def alerts_settings(service_env: dict) -> AlertsSettings:
    return AlertsSettings(**service_env, port=free_port(), consumer_group=f"alerts-{free_port()}")


READINGS = [
    reading(
        {"device_id": "hot-1", "ts": "2025-01-15T10:00:00Z", "temperature_c": 25.0, "humidity": 50}
    ),
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:10Z", "temperature_c": 55.0}),
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:20Z", "temperature_c": 70.0}),
    reading({"device_id": "wet-2", "ts": "2025-01-15T10:00:00Z", "humidity": 101.0}),
    reading({"device_id": "cold-3", "event_id": "c-1", "metrics": {"temp": -30.0}}),
]


async def test_threshold_breaches_become_alerts_and_events_once(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    await publish(producer, topics.telemetry, READINGS)
    # The same readings again: a device retry, then (below) a whole-topic replay.
    await publish(producer, topics.telemetry, READINGS[1:3])
    bootstrap = service_env["kafka_bootstrap_servers"]
    async with running(run_alerts, alerts_settings(service_env)) as registry:

        async def evaluated() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 7

        await eventually(evaluated)
    assert await db[ALERTS].count_documents({}) == 4
    by_value = {a["value"]: a async for a in db[ALERTS].find({})}
    assert by_value[55.0]["severity"] == "warning"
    assert by_value[70.0]["severity"] == "critical"
    assert by_value[101.0]["alert_type"] == "humidity_high"
    assert by_value[-30.0]["alert_type"] == "temperature_low"
    assert by_value[-30.0]["severity"] == "critical"
    for alert in by_value.values():
        assert alert["status"] == "active"
        assert alert["device_id"] in alert["message"]
        assert alert["created_at"].tzinfo is not None

    events = await read_topic(bootstrap, topics.alerts, expected=4)
    assert len(events) == 4
    payloads = [orjson.loads(e.value) for e in events]
    assert sorted(p["value"] for p in payloads) == [-30.0, 55.0, 70.0, 101.0]
    assert all(e.key == p["device_id"].encode() for e, p in zip(events, payloads, strict=True))
    assert all(p["timestamp"].endswith("Z") for p in payloads)

    # Replay the whole topic into the same database: no second alert, no second event.
    async with running(run_alerts, alerts_settings(service_env)) as registry:

        async def replayed() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 7

        await eventually(replayed)
        assert metric_value(registry, "alerts_published_total") == 0
    assert await db[ALERTS].count_documents({}) == 4
    assert len(await read_topic(bootstrap, topics.alerts, expected=5, timeout_s=3)) == 4
