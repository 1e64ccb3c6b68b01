"""The alerts worker on real Kafka and MongoDB: one alert per incident, each transition once."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from alerts_worker.store import ALERT_OUTBOX, ALERT_STATE
from alerts_worker.worker import run as run_alerts
from integration.readings import publish, reading
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.infra.mongo import ALERT_RULES, ALERTS
from telemetry_common.infra.settings import AlertsSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration


def alerts_settings(service_env: dict) -> AlertsSettings:
    return AlertsSettings(
        **service_env,
        port=free_port(),
        consumer_group=f"alerts-{free_port()}",
        rules_refresh_s=0.2,
    )


READINGS = [
    reading(
        {"device_id": "hot-1", "ts": "2025-01-15T10:00:00Z", "temperature_c": 25.0, "humidity": 50}
    ),
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:10Z", "temperature_c": 55.0}),
    # Still too hot: the same incident, no second alert.
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:20Z", "temperature_c": 70.0}),
    reading({"device_id": "wet-2", "ts": "2025-01-15T10:00:00Z", "humidity": 101.0}),
    reading({"device_id": "cold-3", "event_id": "c-1", "metrics": {"temp": -30.0}}),
]
# hot-1 cools down (its alert resolves), then heats up again: a new alert.
LATER = [
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:30Z", "temperature_c": 40.0}),
    reading({"device_id": "hot-1", "ts": "2025-01-15T10:00:40Z", "temperature_c": 65.0}),
]


async def test_incidents_become_one_alert_each_and_transitions_are_published_once(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    await publish(producer, topics.telemetry, READINGS)
    # The same readings again: a device retry, then (below) a whole-topic replay.
    await publish(producer, topics.telemetry, READINGS[1:3])
    await publish(producer, topics.telemetry, LATER)
    bootstrap = service_env["kafka_bootstrap_servers"]
    async with running(run_alerts, alerts_settings(service_env)) as registry:

        async def evaluated() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 9

        await eventually(evaluated)
        assert metric_value(registry, "alerts_fired_total", {"severity": "warning"}) == 2
        assert metric_value(registry, "alerts_fired_total", {"severity": "critical"}) == 2
        assert metric_value(registry, "alerts_resolved_total", {"severity": "warning"}) == 1
    alerts = [a async for a in db[ALERTS].find({}).sort("fired_at", 1)]
    by_device = {(a["device_id"], a["status"]): a for a in alerts}
    assert len(alerts) == 4
    first_hot = by_device[("hot-1", "resolved")]
    assert (first_hot["value"], first_hot["severity"]) == (55.0, "warning")
    assert first_hot["resolved_at"].isoformat() == "2025-01-15T10:00:30+00:00"
    second_hot = by_device[("hot-1", "active")]
    assert second_hot["value"] == 65.0
    assert second_hot["alert_id"] != first_hot["alert_id"]
    assert by_device[("wet-2", "active")]["alert_type"] == "humidity_high"
    assert (first_hot["sensor_type"], first_hot["alert_type"]) == (
        "temperature_c",
        "temperature_c_high",
    )
    cold = by_device[("cold-3", "active")]
    # The general form named it `temp`: the alert says so; the rule is the same.
    assert (cold["sensor_type"], cold["alert_type"], cold["severity"], cold["alert_id"]) == (
        "temp",
        "temp_low",
        "critical",
        "c-1:temperature_low",
    )
    for alert in alerts:
        assert alert["device_id"] in alert["message"]
        assert alert["created_at"].tzinfo is not None
        # The built-in rules: one per sensor and direction, named by the metric seen.
        assert alert["alert_type"] == f"{alert['sensor_type']}_{alert['rule_id'].split('_')[-1]}"

    events = await read_topic(bootstrap, topics.alerts, expected=5)
    payloads = [orjson.loads(e.value) for e in events]
    assert sorted((p["device_id"], p["transition"], p["value"]) for p in payloads) == [
        ("cold-3", "fired", -30.0),
        ("hot-1", "fired", 55.0),
        ("hot-1", "fired", 65.0),
        ("hot-1", "resolved", 55.0),
        ("wet-2", "fired", 101.0),
    ]
    hot = [p for p in payloads if p["device_id"] == "hot-1"]
    assert [p["transition"] for p in hot] == ["fired", "resolved", "fired"]
    assert all(e.key == p["device_id"].encode() for e, p in zip(events, payloads, strict=True))
    for p in payloads:
        assert p["notification_id"] == f"{p['alert_id']}:{p['transition']}"
        assert p["timestamp"].endswith("Z") and p["transition_at"].endswith("Z")
        assert {"rule_id", "rule_name", "fired_at", "acknowledged_at"} <= p.keys()

    # Replay the whole topic into the same database: no second alert, no second event.
    async with running(run_alerts, alerts_settings(service_env)) as registry:

        async def replayed() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 9

        await eventually(replayed)
        assert metric_value(registry, "alerts_published_total") == 0
        # States with something open were skipped by their watermarks; idle ones
        # (never stored) decide nothing again.
        for counter in ("alerts_fired_total", "alerts_resolved_total"):
            for severity in ("warning", "critical"):
                assert metric_value(registry, counter, {"severity": severity}) == 0
    assert await db[ALERTS].count_documents({}) == 4
    assert len(await read_topic(bootstrap, topics.alerts, expected=6, timeout_s=3)) == 5


async def test_a_transition_sent_before_a_crash_is_not_sent_again(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    """The crash fell between publishing transitions and marking them: the restarted
    worker finds them on alerts.triggered and only marks them, whether its replay
    skips their readings (the state kept them) or evaluates them again (it did not)."""
    bootstrap = service_env["kafka_bootstrap_servers"]

    async def run_until_evaluated(readings: int) -> float:
        async with running(run_alerts, alerts_settings(service_env)) as registry:

            async def evaluated() -> bool:
                return metric_value(registry, "alerts_readings_evaluated_total") == readings

            await eventually(evaluated)
            return metric_value(registry, "alerts_published_total")

    async def crash_before_marking() -> None:
        await db[ALERT_OUTBOX].update_many({}, {"$set": {"notified": False}})

    await publish(producer, topics.telemetry, READINGS[:2])
    assert await run_until_evaluated(2) == 1  # fired
    await crash_before_marking()
    # The device's next reading (same partition) cools it down.
    await publish(producer, topics.telemetry, LATER[:1])
    assert await run_until_evaluated(3) == 1  # resolved; fired was found on the topic
    await crash_before_marking()
    await db[ALERT_STATE].delete_many({})  # nothing kept: the replay evaluates all again
    assert await run_until_evaluated(3) == 0
    events = await read_topic(bootstrap, topics.alerts, expected=3, timeout_s=3)
    assert [orjson.loads(e.value)["transition"] for e in events] == ["fired", "resolved"]
    assert await db[ALERT_OUTBOX].count_documents({"notified": False}) == 0


async def test_each_projects_readings_meet_their_own_projects_rules_only(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    # A rule of the roof project, stricter than the default project's built-in one.
    await db[ALERT_RULES].insert_one(
        {
            "_id": "r-roof",
            "project_id": "prj-roof",
            "name": "Roof warm",
            "metric": "temperature_c",
            "operator": ">",
            "threshold": 40.0,
        }
    )
    # The same device id and event id in both projects: two devices, two readings.
    hot = {"device_id": "hot-8", "ts": "2025-01-15T10:00:00Z", "event_id": "same-1"}
    roof = reading({**hot, "temperature_c": 45.0})
    # Same device id, so the same partition: the other project's comes first.
    await producer.send_and_wait(
        topics.telemetry, roof.to_kafka_value(), key=b"hot-8", headers=[("project", b"prj-roof")]
    )
    await publish(producer, topics.telemetry, [reading({**hot, "temperature_c": 75.0})])
    async with running(run_alerts, alerts_settings(service_env)):

        async def fired() -> bool:
            return await db[ALERTS].count_documents({}) >= 2

        await eventually(fired)
    alerts = {(a["project_id"], a["rule_id"], a["event_id"]) async for a in db[ALERTS].find({})}
    # 45 is above the roof's 40 but below the built-in 50: each project's own rule judged it.
    assert alerts == {("prj-roof", "r-roof", "same-1"), ("default", "temperature_high", "same-1")}
