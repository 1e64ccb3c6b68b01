"""Who may call what, for every operation both APIs document, with keys required.

The matrix is generated from the OpenAPI documents: each operation's security
requirement names the role it needs (ingest, read, manage or admin; none for
/health, /metrics and the banner), so a new route is checked the day it is added,
against what it enforces rather than what someone remembered to list here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from dashboard_api.app import create_app as create_dashboard
from ingestion_api.app import create_app as create_ingestion
from integration.served import serving, stream
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.alert_rules import RuleCreate
from telemetry_common.domain.resolutions import DEFAULT_PLAN
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    bucket_document,
    scoped_id,
    windows_of,
)
from telemetry_common.http.api_keys import issue_key, revoke_key
from telemetry_common.infra.mongo import (
    ALERT_RULES,
    ALERT_SILENCES,
    ALERTS,
    DEVICES,
    RAW,
    ROLLUPS,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
)
from telemetry_common.infra.settings import DashboardSettings, IngestionSettings
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-" + "m4Tz8Qp2Lr6Vx9Kc3Wn7Hb1J"
PUBLIC = "public"


@dataclass(frozen=True)
class Holder:
    """Someone calling with a key (or none), and the roles that key carries."""

    name: str
    key: str | None
    roles: frozenset[str]
    # The project a key works in (the admin key: any).
    project: str = DEFAULT_PROJECT


async def holders(db: AsyncDatabase) -> list[Holder]:
    other, _ = await issue_key(db, "another project's", project_id="prj-other")
    device, _ = await issue_key(db, "a device's", devices=["dev-1"])
    reader, _ = await issue_key(db, "wall display", scopes=["read"])
    manager, _ = await issue_key(db, "operator", scopes=["manage"])
    return [
        Holder("no key", None, frozenset()),
        # Every scope of a project's key, in another project: it works in its own
        # (what it must never see of the default project's is checked below).
        Holder(
            "another project's key",
            other,
            frozenset({"ingest", "read", "manage"}),
            project=OTHER_PROJECT,
        ),
        Holder("a device-bound ingest key", device, frozenset({"ingest"})),
        Holder("a read key", reader, frozenset({"read"})),
        Holder("a manage key", manager, frozenset({"manage"})),
        Holder("the admin key", ADMIN_KEY, frozenset({"ingest", "read", "manage", "admin"})),
    ]


@dataclass(frozen=True)
class Operation:
    api: str
    method: str
    path: str
    role: str
    spec: dict[str, Any]

    def url(self) -> str:
        """The path with each parameter's documented example."""
        path = self.path
        for param in self.spec.get("parameters", []):
            if param["in"] == "path":
                path = path.replace("{" + param["name"] + "}", str(example_of(param)))
        return path

    def query(self) -> dict[str, str]:
        return {
            p["name"]: str(example_of(p))
            for p in self.spec.get("parameters", [])
            if p["in"] == "query" and p.get("required")
        }


def example_of(param: dict[str, Any]) -> Any:
    schema = param.get("schema", {})
    for source in (param, schema):
        if "example" in source:
            return source["example"]
        if source.get("examples"):
            examples = source["examples"]
            return examples[0] if isinstance(examples, list) else next(iter(examples.values()))
    raise AssertionError(f"parameter {param['name']} has no example in the OpenAPI document")


def operations(api: str, document: dict[str, Any]) -> list[Operation]:
    found = []
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            security = spec.get("security")
            if security:
                (requirement,) = security
                (roles,) = requirement.values()
                (role,) = roles
            else:
                role = PUBLIC
            found.append(Operation(api, method.upper(), path, role, spec))
    return found


@asynccontextmanager
async def both_apis(service_env: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    keys = {"api_keys_required": True, "admin_api_key": ADMIN_KEY, "api_keys_refresh_s": 0.2}
    dashboard = create_dashboard(DashboardSettings(**service_env, **keys))
    ingestion = create_ingestion(IngestionSettings(**service_env, **keys))
    async with serving(dashboard) as dashboard_url, serving(ingestion) as ingestion_url:
        yield {"dashboard": dashboard_url, "ingestion": ingestion_url}


async def test_every_operation_answers_each_key_as_its_documented_role(
    service_env: dict[str, Any], db: AsyncDatabase
) -> None:
    callers = await holders(db)
    async with both_apis(service_env) as bases, aiohttp.ClientSession() as http:

        async def loaded() -> bool:
            async with http.get(
                f"{bases['dashboard']}/stats", headers={"X-API-Key": callers[3].key or ""}
            ) as answer:
                return answer.status == 200

        await eventually(loaded)
        documented: list[Operation] = []
        for api, base in bases.items():
            async with http.get(f"{base}/openapi.json") as answer:
                documented += operations(api, await answer.json())
        # Both documents, every operation: a route the matrix missed would go unchecked.
        assert {(o.api, o.method, o.path) for o in documented} >= {
            ("dashboard", "GET", "/telemetry"),
            ("dashboard", "POST", "/orgs"),
            ("dashboard", "GET", "/alerts/stream"),
            ("ingestion", "POST", "/ingest"),
        }
        public = {(o.api, o.path) for o in documented if o.role == PUBLIC}
        assert public == {(api, path) for api in bases for path in ("/", "/health", "/metrics")}, (
            "only health, metrics and the banner answer without a key"
        )

        wrong = []
        for operation in documented:
            for holder in callers:
                allowed = operation.role == PUBLIC or (
                    operation.role in holder.roles
                    # A path naming a project (its examples: the default) is that
                    # project's keys' and the admin's.
                    and ("{project_id}" not in operation.path or holder.project == DEFAULT_PROJECT)
                )
                headers = {"X-API-Key": holder.key} if holder.key else {}
                body = {} if "requestBody" in operation.spec else None
                async with http.request(
                    operation.method,
                    bases[operation.api] + operation.url(),
                    params=operation.query(),
                    json=body,
                    headers=headers,
                    allow_redirects=False,
                ) as answer:
                    status = answer.status
                if allowed:
                    ok = status not in (401, 403) and str(status) in operation.spec["responses"]
                    expected = "a documented answer, neither 401 nor 403"
                else:
                    expected = "401" if holder.key is None else "403"
                    ok = str(status) == expected
                if not ok:
                    wrong.append(
                        f"{operation.method} {operation.api}{operation.url()} with "
                        f"{holder.name}: {status}, expected {expected}"
                    )
        assert not wrong, "\n".join(wrong)


async def test_a_stream_token_opens_a_stream_where_headers_cannot_be_sent(
    service_env: dict[str, Any], db: AsyncDatabase
) -> None:
    reader, record = await issue_key(db, "wall display", scopes=["read"])
    async with both_apis(service_env) as bases, aiohttp.ClientSession() as http:
        base = bases["dashboard"]

        async def loaded() -> bool:
            async with http.get(f"{base}/stats", headers={"X-API-Key": reader}) as answer:
                return answer.status == 200

        await eventually(loaded)
        async with http.post(f"{base}/streams/token", headers={"X-API-Key": reader}) as answer:
            assert answer.status == 201
            issued = await answer.json()
            token = issued["token"]
        # Timestamps as everywhere in the API: ISO 8601 UTC, milliseconds, Z.
        assert len(issued["expires_at"]) == 24 and issued["expires_at"].endswith("Z")
        assert token.startswith("st_") and reader not in token

        stream = f"{base}/devices/dev-1/stream"
        async with http.get(stream, params={"token": token}) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/event-stream")
        async with http.get(stream, params={"token": "st_forged"}) as answer:
            assert answer.status == 401
            assert (await answer.json())["errors"][0]["field"] == "token"

        # Revoking the key ends its tokens within the keys' refresh.
        await revoke_key(db, record.key_id)

        async def refused() -> bool:
            async with http.get(stream, params={"token": token}) as answer:
                return answer.status == 401

        await eventually(refused)


# In everything the default project holds below, and in nothing another project may see.
MARKER = "default_only_7f3a"
OTHER_PROJECT = "prj-other"
NOW = datetime.now(UTC).replace(microsecond=0)


async def seed_default_project(db: AsyncDatabase) -> None:
    """One of everything in the default project, under the ids the OpenAPI examples use,
    so that every path the matrix calls names an object that exists."""
    default = {"project_id": DEFAULT_PROJECT}
    await db[RAW].insert_one(
        {
            "_id": "e001",
            **default,
            "device_id": "dev-1",
            "ts": NOW,
            "received_at": NOW,
            "metrics": {MARKER: 1.0},
            "tags": [MARKER, "room:101"],
        }
    )
    await db[DEVICES].insert_one(
        {
            "_id": "dev-1",
            **default,
            "device_id": "dev-1",
            "first_seen": NOW,
            "last_seen": NOW,
            "reading_count": 1,
            "last_values": {MARKER: 1.0},
            "tags": [MARKER],
        }
    )
    one = Rollup()
    one.add(1.0, NOW)
    await db[ROLLUPS].insert_one(
        bucket_document(
            project_id=DEFAULT_PROJECT,
            device_id="dev-1",
            resolution="1m",
            start=NOW.replace(second=0),
            metrics={MARKER: one.to_fields()},
            applied={"0": 0},
            epoch=1,
            now=NOW,
            keep_for=None,
            windows=windows_of(NOW.replace(second=0), DEFAULT_PLAN.derived_from("1m")),
        )
    )
    await db[ALERTS].insert_one(
        {
            "_id": "e001:temperature_high",
            "alert_id": "e001:temperature_high",
            **default,
            "device_id": "dev-1",
            "sensor_type": MARKER,
            "value": 61.0,
            "threshold": 50.0,
            "alert_type": "temperature_c_high",
            "severity": "critical",
            "message": MARKER,
            "rule_id": "r-4f1c2a9b03de",
            "timestamp": NOW,
            "created_at": NOW,
            "status": "active",
            "acknowledged_at": None,
        }
    )
    rule = RuleCreate.model_validate(
        {"name": MARKER, "metric": "temperature_c", "operator": ">", "threshold": 30.0}
    )
    await db[ALERT_RULES].insert_one(
        {
            "_id": "r-4f1c2a9b03de",
            **default,
            **rule.model_dump(by_alias=True),
            "builtin": False,
            "created_at": NOW,
            "created_by": "admin",
            "updated_at": NOW,
        }
    )
    await db[ALERT_SILENCES].insert_one(
        {
            "_id": "s-9a0b1c2d3e4f",
            **default,
            "rule_id": None,
            "device_id": "dev-1",
            "until": NOW + timedelta(days=1),
            "comment": MARKER,
            "created_at": NOW,
            "created_by": "admin",
        }
    )
    await db[WEBHOOKS].insert_one(
        {
            "_id": "wh_3f9a1c0e5b7d2468",
            **default,
            "url": "https://hooks.example.com/telemetry",
            "description": MARKER,
            "secret": f"whsec_{MARKER}",
            "created_at": NOW,
            "created_by": "admin",
        }
    )
    await db[WEBHOOK_DELIVERIES].insert_one(
        {
            "_id": "wh_3f9a1c0e5b7d2468:e001:temperature_high:fired",
            **default,
            "webhook_id": "wh_3f9a1c0e5b7d2468",
            "notification_id": "e001:temperature_high:fired",
            "alert_id": "e001:temperature_high",
            "device_id": "dev-1",
            "severity": "critical",
            "transition": "fired",
            "rule_id": MARKER,
            "status": "delivered",
            "attempt_count": 1,
            "attempts": [],
            "created_at": NOW,
        }
    )


async def default_project_as_seeded(db: AsyncDatabase) -> dict[str, Any]:
    """What another project's key must not have changed."""
    return {
        "alert": await db[ALERTS].find_one({"_id": "e001:temperature_high"}),
        "rule": await db[ALERT_RULES].find_one({"_id": "r-4f1c2a9b03de"}),
        "silence": await db[ALERT_SILENCES].find_one({"_id": "s-9a0b1c2d3e4f"}),
        "webhook": await db[WEBHOOKS].find_one({"_id": "wh_3f9a1c0e5b7d2468"}),
    }


async def test_another_projects_key_never_sees_nor_changes_the_default_projects_data(
    service_env: dict[str, Any], db: AsyncDatabase, topics: Topics, producer: AIOKafkaProducer
) -> None:
    await seed_default_project(db)
    seeded = await default_project_as_seeded(db)
    assert all(seeded.values())
    other, _ = await issue_key(db, "another project's", project_id=OTHER_PROJECT)
    as_other = {"X-API-Key": other}
    admin = {"X-API-Key": ADMIN_KEY}
    async with both_apis(service_env) as bases, aiohttp.ClientSession() as http:
        base = bases["dashboard"]

        async def loaded() -> bool:
            async with http.get(f"{base}/stats", headers=as_other) as answer:
                return answer.status == 200

        await eventually(loaded)
        async with http.get(f"{base}/openapi.json") as answer:
            documented = operations("dashboard", await answer.json())
        calls = [
            o for o in documented if o.role in ("read", "manage") and not o.path.endswith("/stream")
        ]
        seen_by_admin = ""
        for operation in calls:
            body = {} if "requestBody" in operation.spec else None
            async with http.request(
                operation.method,
                base + operation.url(),
                params=operation.query(),
                json=body,
                headers=as_other,
            ) as answer:
                text = await answer.text()
                assert str(answer.status) in operation.spec["responses"], (operation.path, text)
            assert MARKER not in text, f"{operation.method} {operation.url()} showed {text}"
            if operation.method == "GET":
                # The same call for the default project: the data is there to be leaked.
                async with http.get(
                    base + operation.url(), params=operation.query(), headers=admin
                ) as answer:
                    seen_by_admin += await answer.text()
        assert {"/telemetry", "/devices", "/aggregated", "/alerts", "/alerts/rules"} <= {
            o.path for o in calls
        }
        assert MARKER in seen_by_admin
        # Every write with another project's key missed the default project's objects.
        assert await default_project_as_seeded(db) == seeded

        async with http.get(f"{base}/stats", headers=as_other) as answer:
            figures = await answer.json()
        assert (figures["total_readings"], figures["total_devices"], figures["total_alerts"]) == (
            0,
            0,
            0,
        )
        # The admin key names a project it may work in; a project's key only its own.
        async with http.get(
            f"{base}/devices", params={"project_id": "default"}, headers=as_other
        ) as answer:
            assert answer.status == 403
            assert (await answer.json())["errors"][0]["field"] == "project_id"

        async with http.post(f"{base}/streams/token", headers=as_other) as answer:
            token = (await answer.json())["token"]
        device_url = f"{base}/devices/dev-1/stream?token={token}"
        alerts_url = f"{base}/alerts/stream?token={token}"
        async with (
            stream(http, device_url, "watching dev-1") as readings,
            stream(http, alerts_url, "watching alerts") as alerts,
        ):
            for project_id, mark in ((DEFAULT_PROJECT, MARKER), (OTHER_PROJECT, "mine")):
                await db[RAW].insert_one(
                    {
                        "_id": scoped_id(project_id, f"e-{mark}"),
                        "event_id": f"e-{mark}",
                        "project_id": project_id,
                        "device_id": "dev-1",
                        "ts": NOW + timedelta(minutes=1),
                        "received_at": NOW,
                        "metrics": {"t": 1.0},
                        "tags": [mark],
                    }
                )
                event = {
                    "alert_id": f"e-{mark}:r",
                    "notification_id": f"e-{mark}:r:fired",
                    "project_id": project_id,
                    "device_id": "dev-1",
                    "transition": "fired",
                    "message": mark,
                }
                await producer.send_and_wait(topics.alerts, orjson.dumps(event), key=b"dev-1")
            pushed = await readings.until(lambda seen: "mine" in str(seen))
            announced = await alerts.until(lambda seen: "mine" in str(seen))
        assert MARKER not in str(pushed) and MARKER not in str(announced)
