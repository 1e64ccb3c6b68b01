"""Alert rules through dashboard-api, evaluated by the alerts worker, on real Kafka and MongoDB.

A rule created through the API fires on the next matching readings and resolves
when they clear; the alert stream delivers both transitions to a connected
client; writes need a writer's key when keys are required.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from alerts_worker.worker import run as run_alerts
from dashboard_api.app import create_app
from integration.readings import publish, reading
from integration.served import serving, stream
from integration.workers import metric_value, running
from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.http.api_keys import issue_key
from telemetry_common.infra.settings import AlertsSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-for-the-alert-rule-tests-0123456789"
PRESSURE_RULE = {
    "name": "Pressure high",
    "metric": "pressure",
    "operator": ">",
    "threshold": 100,
    "severity": "critical",
    "scope": "devices",
    "devices": ["p-1"],
    "k": 2,
    "n": 3,
    "clear_threshold": 95,
}


def pressure(device_id: str, second: int, value: float) -> Any:
    return reading(
        {"device_id": device_id, "ts": f"2025-01-15T10:00:{second:02d}Z", "pressure": value}
    )


def transitions(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["device_id"], e["data"]["transition"]) for e in events if "data" in e]


async def rules_loaded(registry: CollectorRegistry, count: int) -> None:
    async def loaded() -> bool:
        return metric_value(registry, "alerts_rules_loaded") == count

    await eventually(loaded)


async def test_rule_from_the_api_fires_resolves_and_streams(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    dashboard = create_app(DashboardSettings(**service_env, stream_heartbeat_s=0.5))
    worker_settings = AlertsSettings(
        **service_env, port=free_port(), consumer_group="alerts", rules_refresh_s=0.2
    )
    async with (
        serving(dashboard) as base,
        running(run_alerts, worker_settings) as registry,
        aiohttp.ClientSession() as http,
    ):
        await rules_loaded(registry, 4)  # the built-in ones
        listed = await (await http.get(f"{base}/alerts/rules?builtin=true")).json()
        assert sorted(r["rule_id"] for r in listed["data"]) == [
            "humidity_high",
            "humidity_low",
            "temperature_high",
            "temperature_low",
        ]
        created = await http.post(f"{base}/alerts/rules", json=PRESSURE_RULE)
        assert created.status == 201
        rule = await created.json()
        assert {**rule, **PRESSURE_RULE} == rule
        assert (rule["for"], rule["cooldown"], rule["builtin"]) == ("0s", "0s", False)
        await rules_loaded(registry, 5)

        url = f"{base}/alerts/stream?device_id=p-1"
        async with stream(http, url, "watching alerts of p-1") as events:
            await publish(
                producer,
                topics.telemetry,
                # p-2 is outside the rule's scope; p-1 breaches 2 of 3 at the third reading.
                [pressure("p-2", 0, 500), pressure("p-1", 1, 101), pressure("p-1", 2, 90)],
            )
            await publish(producer, topics.telemetry, [pressure("p-1", 3, 102)])
            seen = await events.until(lambda seen: transitions(seen) == [("p-1", "fired")])
            fired = [e for e in seen if "data" in e][-1]
            assert fired["id"] == fired["data"]["notification_id"]
            alert = fired["data"]
            assert (alert["rule_id"], alert["severity"], alert["value"]) == (
                rule["rule_id"],
                "critical",
                102.0,
            )
            # Hovering above the clear threshold holds it; two readings under it clear it.
            await publish(
                producer,
                topics.telemetry,
                [pressure("p-1", 4, 97), pressure("p-1", 5, 96), pressure("p-1", 6, 90)],
            )
            await publish(producer, topics.telemetry, [pressure("p-1", 7, 90)])
            seen = await events.until(lambda seen: transitions(seen) == [("p-1", "resolved")])
            resolved = [e for e in seen if "data" in e][-1]["data"]
            assert resolved["alert_id"] == alert["alert_id"]
            assert resolved["resolved_at"] == "2025-01-15T10:00:07.000Z"

        page = await (await http.get(f"{base}/alerts", params={"rule_id": rule["rule_id"]})).json()
        assert [(a["device_id"], a["status"]) for a in page["data"]] == [("p-1", "resolved")]
        acked = await http.post(f"{base}/alerts/{alert['alert_id']}/ack")
        assert acked.status == 200
        assert (await acked.json())["acknowledged_by"] == "anonymous"

        # Disabled, the rule no longer fires.
        patched = await http.patch(
            f"{base}/alerts/rules/{rule['rule_id']}", json={"enabled": False}
        )
        assert (await patched.json())["enabled"] is False
        await rules_loaded(registry, 4)
        await publish(producer, topics.telemetry, [pressure("p-1", s, 500) for s in (8, 9)])

        async def all_evaluated() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == 10

        await eventually(all_evaluated)
    bootstrap = service_env["kafka_bootstrap_servers"]
    events = await read_topic(bootstrap, topics.alerts, expected=3, timeout_s=3)
    assert [orjson.loads(e.value)["transition"] for e in events] == ["fired", "resolved"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"k": 4, "n": 3}, "k"),
        ({"operator": "<", "clear_threshold": 99}, "clear_threshold"),
        ({"operator": "==", "clear_threshold": 100}, "clear_threshold"),
        ({"scope": "tag"}, "tag"),
        ({"scope": "all", "devices": ["p-1"]}, "devices"),
        ({"threshold": "hot"}, "threshold"),
        ({"operator": "=>"}, "operator"),
        ({"for": "5 minutes"}, "for"),
        ({"unknown": 1}, "unknown"),
    ],
)
async def test_bad_rules_get_a_422_naming_the_field(
    service_env: dict, change: dict[str, Any], field: str
) -> None:
    async with serving(create_app(DashboardSettings(**service_env))) as base:
        async with aiohttp.ClientSession() as http:
            answer = await http.post(f"{base}/alerts/rules", json={**PRESSURE_RULE, **change})
            assert answer.status == 422
            body = await answer.json()
            assert [e["field"] for e in body["errors"]] == [field]
            created = await http.post(f"{base}/alerts/rules", json=PRESSURE_RULE)
            rule_id = (await created.json())["rule_id"]
            patched = await http.patch(f"{base}/alerts/rules/{rule_id}", json=change)
            assert patched.status == 422
            assert [e["field"] for e in (await patched.json())["errors"]] == [field]


async def test_rule_writes_need_a_writers_key_when_keys_are_required(
    service_env: dict, db: AsyncDatabase
) -> None:
    device_key, _ = await issue_key(db, "sensor", devices=["p-1"])
    operator_key, _ = await issue_key(db, "on-call")
    settings = DashboardSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    shorthand = {"device_id": "p-1", "metric": "pressure", "op": ">", "threshold": 100}
    async with serving(create_app(settings)) as base, aiohttp.ClientSession() as http:

        async def post(path: str, body: dict[str, Any], key: str | None) -> aiohttp.ClientResponse:
            headers = {"X-API-Key": key} if key else {}
            return await http.post(f"{base}{path}", json=body, headers=headers)

        silence = {"device_id": "p-1", "until": "2999-01-01T00:00:00Z"}
        for path, body in (
            ("/alerts/rules", PRESSURE_RULE),
            ("/v1/alerts", shorthand),
            ("/alerts/silences", silence),
        ):
            assert (await post(path, body, None)).status == 401
            assert (await post(path, body, "tk_nope_nope")).status == 401
            assert (await post(path, body, device_key)).status == 403
        created = await post("/alerts/rules", PRESSURE_RULE, operator_key)
        assert created.status == 201
        assert (await created.json())["created_by"] == "on-call"
        rule_id = (await created.json())["rule_id"]
        assert (await http.delete(f"{base}/alerts/rules/{rule_id}")).status == 401
        deleted = await http.delete(
            f"{base}/alerts/rules/{rule_id}", headers={"X-API-Key": ADMIN_KEY}
        )
        assert deleted.status == 204
        gone = await http.get(f"{base}/alerts/rules/{rule_id}", headers={"X-API-Key": operator_key})
        assert gone.status == 404

        # The seed's shorthand registers a rule on that one device.
        short = await post("/v1/alerts", shorthand, ADMIN_KEY)
        assert short.status == 201
        rule = await short.json()
        assert (rule["scope"], rule["devices"], rule["metric"], rule["operator"]) == (
            "devices",
            ["p-1"],
            "pressure",
            ">",
        )
        assert (rule["k"], rule["n"], rule["enabled"]) == (1, 1, True)
        # Reading needs a key too, one that may read; a device's key may not.
        assert (await http.get(f"{base}/alerts/rules")).status == 401
        for key, status in ((device_key, 403), (operator_key, 200), (ADMIN_KEY, 200)):
            listed = await http.get(f"{base}/alerts/rules", headers={"X-API-Key": key})
            assert listed.status == status


async def test_anomaly_and_rate_rules_fire_through_the_worker_and_keep_their_state(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    """Rules of the other kinds, from the API through the worker: each device's baseline
    is learned from its own readings and kept across a restart of the worker."""
    dashboard = create_app(DashboardSettings(**service_env))
    worker_settings = AlertsSettings(
        **service_env, port=free_port(), consumer_group="alerts-kinds", rules_refresh_s=0.2
    )
    unusual = {"name": "Unusual vibration", "metric": "vibration", "kind": "anomaly"}
    falling = {
        "name": "Level falling",
        "metric": "level",
        "kind": "rate",
        "operator": "<",
        "threshold": -1,
        "window": "1m",
    }

    def at(device: str, second: int, **metrics: float) -> Any:
        minute, second = divmod(second, 60)
        ts = f"2025-01-15T10:{minute:02d}:{second:02d}Z"
        return reading({"device_id": device, "ts": ts, **metrics})

    async def alerts_of(rule_id: str) -> list[dict[str, Any]]:
        return [a async for a in db["alerts"].find({"rule_id": rule_id})]

    async with serving(dashboard) as base, aiohttp.ClientSession() as http:
        rules = {}
        for body in (unusual, falling):
            created = await http.post(f"{base}/alerts/rules", json=body)
            assert created.status == 201, await created.text()
            rules[body["kind"]] = (await created.json())["rule_id"]
        bad = await http.post(f"{base}/alerts/rules", json={**unusual, "threshold": 3})
        assert bad.status == 422
        assert (await bad.json())["errors"][0]["field"] == "threshold"

    # 40 ordinary readings of each device (v-1 around 1.0, v-2 around 9.0), then the
    # worker stops; after its restart, the baselines it learned judge what comes next.
    normal = [at("v-1", s, vibration=1.0 + (s % 5) / 10) for s in range(40)]
    normal += [at("v-2", s, vibration=9.0 + (s % 5) / 10) for s in range(40)]
    normal += [at("l-1", s, level=100 - s / 10) for s in range(0, 40, 10)]
    await publish(producer, topics.telemetry, normal)
    async with running(run_alerts, worker_settings) as registry:
        await rules_loaded(registry, 6)

        async def learned() -> bool:
            return metric_value(registry, "alerts_readings_evaluated_total") == len(normal)

        await eventually(learned)
    assert await alerts_of(rules["anomaly"]) == [] and await alerts_of(rules["rate"]) == []

    # 9.0 is ordinary for v-2 and far off for v-1; the level drops 47 in 10 s (from 100
    # 40 s before: -1.25 a second over the minute).
    await publish(
        producer,
        topics.telemetry,
        [at("v-2", 41, vibration=9.2), at("v-1", 41, vibration=9.0), at("l-1", 40, level=50.0)],
    )
    async with running(run_alerts, worker_settings):

        async def fired() -> bool:
            return (
                len(await alerts_of(rules["anomaly"])) == len(await alerts_of(rules["rate"])) == 1
            )

        await eventually(fired)
    [anomaly] = await alerts_of(rules["anomaly"])
    assert (anomaly["device_id"], anomaly["alert_type"]) == ("v-1", "vibration_anomaly")
    [rate] = await alerts_of(rules["rate"])
    assert (rate["device_id"], rate["alert_type"]) == ("l-1", "level_rate_low")
