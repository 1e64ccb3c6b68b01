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
from typing import Any

import aiohttp
import pytest
from dashboard_api.app import create_app as create_dashboard
from ingestion_api.app import create_app as create_ingestion
from integration.served import serving
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.api_keys import issue_key, revoke_key
from telemetry_common.settings import DashboardSettings, IngestionSettings
from telemetry_tools.testing import eventually

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-" + "m4Tz8Qp2Lr6Vx9Kc3Wn7Hb1J"
PUBLIC = "public"


@dataclass(frozen=True)
class Holder:
    """Someone calling with a key (or none), and the roles that key carries."""

    name: str
    key: str | None
    roles: frozenset[str]


async def holders(db: AsyncDatabase) -> list[Holder]:
    other, _ = await issue_key(db, "another project's", project_id="prj-other")
    device, _ = await issue_key(db, "a device's", devices=["dev-1"])
    reader, _ = await issue_key(db, "wall display", scopes=["read"])
    manager, _ = await issue_key(db, "operator", scopes=["manage"])
    return [
        Holder("no key", None, frozenset()),
        # All scopes, in another project: nothing of the default project's.
        Holder("another project's key", other, frozenset()),
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
                allowed = operation.role == PUBLIC or operation.role in holder.roles
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
