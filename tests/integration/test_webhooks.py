"""Webhooks end to end on real Kafka and MongoDB, to a receiver this test serves over HTTP.

Transitions are produced to alerts.triggered in the shape the alert transition
contract fixes (the alerts worker's own output is tested on its side); webhooks
are registered and their deliveries read through the dashboard API.
"""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from alerts_worker.webhooks.notifier import run_notifier
from dashboard_api.app import create_app
from fastapi import FastAPI, Request, Response
from integration.served import Api, api_at, serving
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from standardwebhooks.webhooks import Webhook
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.domain.webhook_signature import verify
from telemetry_common.infra.mongo import WEBHOOK_DELIVERIES
from telemetry_common.infra.settings import AlertsSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-for-webhook-tests-0123456789"


def transition(alert_id: str, kind: str, device_id: str = "dev-1", severity: str = "critical"):
    """An alerts.triggered message as the alert transition contract shapes it."""
    return {
        "alert_id": alert_id,
        "device_id": device_id,
        "sensor_type": "temperature",
        "metric": "temperature_c",
        "value": 61.0,
        "threshold": 50.0,
        "alert_type": "temperature_high",
        "severity": severity,
        "message": f"Temperature 61°C on {device_id} is above maximum 50°C",
        "timestamp": "2025-01-15T10:00:00.000Z",
        "created_at": "2025-01-15T10:00:00.350Z",
        "rule_id": "rule-1",
        "rule_name": "too hot",
        "status": "active" if kind == "fired" else "resolved",
        "fired_at": "2025-01-15T10:00:00.350Z",
        "resolved_at": None if kind == "fired" else "2025-01-15T10:05:00.000Z",
        "acknowledged_at": None,
        "acknowledged_by": None,
        "transition": kind,
        "transition_at": "2025-01-15T10:00:00.350Z",
        "notification_id": f"{alert_id}:{kind}",
    }


async def announce(producer: AIOKafkaProducer, topic: str, *events: dict[str, Any]) -> None:
    for event in events:
        await producer.send(topic, orjson.dumps(event), key=event["device_id"].encode())
    await producer.flush()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook endpoint: answers 503 while ``down`` or for a key's first ``failures`` tries."""

    failures: int = 0
    down: bool = False
    requests: list[Received] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.requests.append(Received(dict(request.headers), await request.body(), time.time()))
            tries = sum(
                r.headers["idempotency-key"] == request.headers["idempotency-key"]
                for r in self.requests
            )
            failing = self.down or tries <= self.failures
            return Response(status_code=503 if failing else 200)

        return app

    def keys(self) -> Counter[str]:
        return Counter(r.headers["idempotency-key"] for r in self.requests)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver()
    async with serving(hook.app()) as base:
        yield hook, f"{base}/hook"


def notifier_settings(service_env: dict, **overrides: Any) -> AlertsSettings:
    options = {
        "port": free_port(),
        "notifier_consumer_group": f"notifier-{uuid.uuid4().hex[:8]}",
        "webhook_allow_private_networks": True,  # the receiver listens on 127.0.0.1
        "webhook_backoff_initial_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_poll_interval_s": 0.1,
        **overrides,
    }
    return AlertsSettings(**service_env, **options)


@pytest.fixture
async def api(service_env: dict) -> AsyncIterator[Api]:
    settings = DashboardSettings(
        **service_env,
        webhook_allow_private_networks=True,
        api_keys_required=True,
        admin_api_key=ADMIN_KEY,
    )
    async with (
        serving(create_app(settings)) as base,
        api_at(base, ADMIN_KEY) as client,
    ):
        yield client


async def register(api: Api, url: str, **filters: Any) -> dict[str, Any]:
    created = await api.post("/alerts/webhooks", json={"url": url, **filters})
    assert created.status_code == 201, created.text
    return created.json()


async def deliveries(api: Api, webhook_id: str) -> list[dict[str, Any]]:
    answer = await api.get(f"/alerts/webhooks/{webhook_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


async def test_transitions_arrive_signed_once_per_webhook_and_are_queryable(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
) -> None:
    hook, url = receiver
    everything = await register(api, url)
    only_warnings = await register(api, url, severity=["warning"])
    fired, resolved = transition("a1", "fired"), transition("a1", "resolved")
    other_device = transition("b2", "fired", device_id="dev-2")
    await announce(producer, topics.alerts, fired, resolved, other_device)
    # An alert event of the first version (no transition) has nothing to notify.
    await announce(producer, topics.alerts, {"alert_id": "x", "device_id": "dev-1"})

    async with running(run_notifier, notifier_settings(service_env)) as registry:

        async def all_arrived() -> bool:
            return len(hook.requests) == 3

        await eventually(all_arrived)
        assert metric_value(registry, "webhook_deliveries_total", {"outcome": "delivered"}) == 3
        assert metric_value(registry, "webhook_notifications_skipped_total") == 1

    assert hook.keys() == {"a1:fired": 1, "a1:resolved": 1, "b2:fired": 1}
    by_key = {r.headers["idempotency-key"]: r for r in hook.requests}
    for event in (fired, resolved, other_device):
        request = by_key[event["notification_id"]]
        assert orjson.loads(request.body) == event
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-telemetry-webhook-id"] == everything["webhook_id"]
        # Standard Webhooks: the receiver's own library checks it (standardwebhooks).
        received = {name.lower(): value for name, value in request.headers.items()}
        assert received["webhook-id"] == event["notification_id"]
        Webhook(everything["secret"]).verify(request.body, received)
        assert verify(everything["secret"], received, request.body, now=time.time())
        assert not verify(only_warnings["secret"], received, request.body, now=time.time())

    listed = await deliveries(api, everything["webhook_id"])
    assert {d["notification_id"] for d in listed} == {"a1:fired", "a1:resolved", "b2:fired"}
    for delivery in listed:
        assert delivery["status"] == "delivered" and delivery["next_attempt_at"] is None
        assert [(a["attempt"], a["status_code"], a["outcome"]) for a in delivery["attempts"]] == [
            (1, 200, "success")
        ]
    assert await deliveries(api, only_warnings["webhook_id"]) == []
    # The secret is shown once, at creation.
    shown = (await api.get(f"/alerts/webhooks/{everything['webhook_id']}")).json()
    assert "secret" not in shown and shown["url"] == url
    second = await api.get(f"/alerts/webhooks/{everything['webhook_id']}/deliveries?limit=2")
    paged = second.json()
    assert paged["count"] == 2 and paged["next_cursor"]


async def test_a_replayed_transition_is_not_delivered_twice(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
    db: AsyncDatabase,
) -> None:
    hook, url = receiver
    await register(api, url)
    fired = transition("r1", "fired")
    # The producer retried after a lost acknowledgement: the same transition twice.
    await announce(producer, topics.alerts, fired, fired)
    settings = notifier_settings(service_env)
    async with running(run_notifier, settings) as registry:

        async def delivered() -> bool:
            value = metric_value(registry, "webhook_deliveries_total", {"outcome": "delivered"})
            return value == 1 and metric_value(registry, "notifier_consumer_records_total") == 2

        await eventually(delivered)
        assert metric_value(registry, "webhook_deliveries_recorded_total") == 1

    # A whole-topic replay (a new consumer group, as after an offset reset) finds
    # every delivery recorded: nothing new, nothing sent.
    replay = notifier_settings(service_env)
    async with running(run_notifier, replay) as registry:

        async def replayed() -> bool:
            return metric_value(registry, "notifier_consumer_records_total") == 2

        await eventually(replayed)
        assert metric_value(registry, "webhook_deliveries_recorded_total") == 0
    assert hook.keys() == {"r1:fired": 1}
    assert await db[WEBHOOK_DELIVERIES].count_documents({}) == 1


async def test_a_failing_receiver_is_retried_with_the_same_key_until_it_succeeds(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
) -> None:
    hook, url = receiver
    hook.failures = 2
    webhook = await register(api, url)
    await announce(producer, topics.alerts, transition("f1", "fired"))
    async with running(run_notifier, notifier_settings(service_env)) as registry:

        async def delivered() -> bool:
            return metric_value(registry, "webhook_deliveries_total", {"outcome": "delivered"}) == 1

        await eventually(delivered)
        failures = {"outcome": "http_error"}
        assert metric_value(registry, "webhook_delivery_attempts_total", failures) == 2

    assert hook.keys() == {"f1:fired": 3}
    assert [r.headers["x-telemetry-attempt"] for r in hook.requests] == ["1", "2", "3"]
    [delivery] = await deliveries(api, webhook["webhook_id"])
    assert delivery["status"] == "delivered" and delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 200]
    assert [a["outcome"] for a in delivery["attempts"]] == ["http_error", "http_error", "success"]


async def make_due(db: AsyncDatabase, notification_id: str) -> None:
    await db[WEBHOOK_DELIVERIES].update_one(
        {"notification_id": notification_id}, {"$set": {"next_attempt_at": utcnow()}}
    )


async def test_pending_deliveries_survive_a_restart_and_give_up_after_max_attempts(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
    db: AsyncDatabase,
) -> None:
    hook, url = receiver
    hook.down = True
    webhook = await register(api, url)
    await announce(producer, topics.alerts, transition("d1", "fired"), transition("d2", "fired"))
    settings = notifier_settings(
        service_env, webhook_backoff_initial_s=60, webhook_backoff_max_s=60
    )
    async with running(run_notifier, settings):

        async def tried_each() -> bool:
            return set(hook.keys()) == {"d1:fired", "d2:fired"}

        await eventually(tried_each)
    # Stopped with both pending and their next attempt a minute away; bring that
    # forward for one, as if the minute had passed while the notifier was down.
    await make_due(db, "d1:fired")
    hook.down = False
    same_group = settings.notifier_consumer_group
    restarted = notifier_settings(
        service_env,
        notifier_consumer_group=same_group,
        webhook_max_attempts=2,
        webhook_backoff_initial_s=60,
        webhook_backoff_max_s=60,
    )
    async with running(run_notifier, restarted) as registry:

        async def resumed() -> bool:
            return metric_value(registry, "webhook_deliveries_total", {"outcome": "delivered"}) == 1

        await eventually(resumed)
    assert hook.keys() == {"d1:fired": 2, "d2:fired": 1}
    listed = {d["notification_id"]: d for d in await deliveries(api, webhook["webhook_id"])}
    assert listed["d1:fired"]["status"] == "delivered"
    assert listed["d2:fired"]["status"] == "pending"
    assert listed["d2:fired"]["next_attempt_at"] is not None

    hook.down = True
    await make_due(db, "d2:fired")
    async with running(run_notifier, restarted) as registry:

        async def gave_up() -> bool:
            return metric_value(registry, "webhook_deliveries_total", {"outcome": "failed"}) == 1

        await eventually(gave_up)
    failed = await api.get(
        f"/alerts/webhooks/{webhook['webhook_id']}/deliveries", params={"status": "failed"}
    )
    [gone] = failed.json()["data"]
    assert gone["notification_id"] == "d2:fired" and gone["attempt_count"] == 2
    assert gone["next_attempt_at"] is None and gone["last_error"] == "HTTP 503"


async def test_a_dead_url_opens_its_circuit_and_is_probed_once_per_cooloff(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
) -> None:
    hook, url = receiver
    hook.down = True
    webhook = await register(api, url)
    await announce(producer, topics.alerts, *(transition(f"c{i}", "fired") for i in range(4)))
    cooloff = 1.0
    settings = notifier_settings(
        service_env,
        webhook_circuit_failures=3,
        webhook_circuit_cooloff_s=cooloff,
        webhook_max_attempts=50,
        # One at a time, so the attempts before the circuit opens are exactly three.
        webhook_concurrency=1,
    )
    async with running(run_notifier, settings) as registry:

        def circuit() -> float:
            return metric_value(registry, "webhook_circuit_state", {"url": url})

        async def two_probes_failed() -> bool:
            return len(hook.requests) >= 5 and circuit() == 2

        await eventually(two_probes_failed)

        async def shown(state: str) -> bool:
            # The dashboard shows the circuit as the worker stores it, each poll.
            served = (await api.get(f"/alerts/webhooks/{webhook['webhook_id']}")).json()
            return (served["circuit"] or {}).get("state") == state

        await eventually(lambda: shown("open"))
        hook.down = False

        async def all_delivered() -> bool:
            return metric_value(registry, "webhook_deliveries_total", {"outcome": "delivered"}) == 4

        await eventually(all_delivered)
        assert circuit() == 0
        await eventually(lambda: shown("closed"))

    arrivals = [r.at for r in hook.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Three failures in a row open the circuit; from then on one probe per cool-off
    # (the breaker measures on a monotonic clock: allow for the wall clock's grain).
    assert all(gap >= cooloff - 0.05 for gap in gaps[2:4]), gaps
    # Once a probe succeeded the circuit closed and the rest went without waiting.
    listed = await deliveries(api, webhook["webhook_id"])
    assert {d["status"] for d in listed} == {"delivered"}
    assert sum(d["attempt_count"] for d in listed) == len(hook.requests)


async def test_delivery_rechecks_the_address_and_refuses_a_private_one(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    receiver: tuple[Receiver, str],
    api: Api,
) -> None:
    hook, url = receiver
    # Registered while private networks were allowed; the notifier no longer allows them.
    webhook = await register(api, url)
    await announce(producer, topics.alerts, transition("s1", "fired"))
    settings = notifier_settings(
        service_env, webhook_allow_private_networks=False, webhook_max_attempts=1
    )
    async with running(run_notifier, settings) as registry:

        async def refused() -> bool:
            return metric_value(registry, "webhook_deliveries_total", {"outcome": "failed"}) == 1

        await eventually(refused)
    assert hook.requests == []
    [delivery] = await deliveries(api, webhook["webhook_id"])
    assert delivery["attempts"][0]["outcome"] == "refused"
    assert "127.0.0.1, a loopback address" in delivery["last_error"]


async def test_webhook_api_needs_a_key_and_refuses_internal_urls(
    service_env: dict, api: Api
) -> None:
    async with api_at(api.base) as anonymous:
        refused = await anonymous.post("/alerts/webhooks", json={"url": "https://1.1.1.1/x"})
        assert refused.status_code == 401
        assert (await anonymous.delete("/alerts/webhooks/wh_0123456789abcdef")).status_code == 401
    chosen = "whsec_" + base64.b64encode(b"a secret of 24 bytes....").decode()
    created = await register(api, "https://1.1.1.1/hook", secret=chosen)
    assert created["secret"] == chosen
    listed = (await api.get("/alerts/webhooks")).json()["data"]
    assert [w["webhook_id"] for w in listed] == [created["webhook_id"]]
    assert all("secret" not in w for w in listed)
    deleted = await api.delete(f"/alerts/webhooks/{created['webhook_id']}")
    assert deleted.status_code == 200 and deleted.json()["url"] == "https://1.1.1.1/hook"
    missing = await api.get(f"/alerts/webhooks/{created['webhook_id']}")
    assert missing.status_code == 404
    assert missing.json()["errors"] == [{"field": "webhook_id", "reason": "no webhook has this id"}]

    strict = DashboardSettings(**service_env)
    async with (
        serving(create_app(strict)) as strict_base,
        api_at(strict_base) as client,
    ):
        for bad, reason in [
            ("http://127.0.0.1:9/x", "targets 127.0.0.1, a loopback address"),
            ("http://169.254.169.254/latest", "targets 169.254.169.254, a cloud metadata address"),
            ("http://[::ffff:10.0.0.1]/x", "targets ::ffff:a00:1, a private address"),
            ("http://localhost/x", "localhost is a local or cluster-internal host name"),
            ("gopher://1.1.1.1/", "must be an http or https URL"),
        ]:
            answer = await client.post("/alerts/webhooks", json={"url": bad})
            assert answer.status_code == 422, bad
            assert answer.json()["errors"] == [{"field": "url", "reason": reason}]
        for secret, reason in [
            ("a-long-random-shared-secret", "must start with whsec_"),
            ("whsec_not base64!", "must be whsec_ followed by base64"),
            ("whsec_" + base64.b64encode(b"short").decode(), "must hold 24 to 64 bytes, not 5"),
        ]:
            answer = await client.post(
                "/alerts/webhooks", json={"url": "https://1.1.1.1/", "secret": secret}
            )
            assert answer.status_code == 422
            [error] = answer.json()["errors"]
            assert error["field"] == "secret" and reason in error["reason"], error
