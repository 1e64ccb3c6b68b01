"""Hostile requests against both APIs: each gets a clear 4xx naming what is wrong, nothing
reaches MongoDB as an operator, and the service goes on serving the next normal request."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from dashboard_api.app import create_app as create_dashboard
from fastapi.testclient import TestClient
from integration.ingestion import ingestion_client
from telemetry_common.infra.settings import DashboardSettings, IngestionSettings

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Hostile:
    """One hostile request and what a client must be told about it."""

    id: str
    path: str
    body: bytes
    status: int | tuple[int, ...]
    # A field the error must name (None: the status alone says it, e.g. 413).
    field: str | None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def reading(**overrides: Any) -> dict[str, Any]:
    return {"device_id": "hostile-1", "temperature_c": 21.5} | overrides


def as_json(value: Any) -> bytes:
    return orjson.dumps(value)


def nested(depth: int) -> bytes:
    return b'{"device_id": "hostile-1", "temperature_c": ' + b"[" * depth + b"]" * depth + b"}"


def gzip_bomb(inflated_bytes: int) -> bytes:
    # Zeros compress about 1000:1: a few KiB on the wire, far more than the body limit inflated.
    return gzip.compress(b"0" * inflated_bytes, compresslevel=9)


INGEST_CASES = [
    Hostile("operator-as-device-id", "/ingest", as_json(reading(device_id={"$ne": None})), 422,
            "device_id"),
    Hostile("where-operator-as-metric", "/ingest", as_json(reading(**{"$where": "sleep(1000)"})),
            422, "$where"),
    Hostile("operator-in-batch", "/ingest/batch",
            as_json([reading(), reading(device_id={"$gt": ""})]), 200, "device_id"),
    Hostile("deeply-nested", "/ingest", nested(100_000), (400, 422), None),
    Hostile("ten-mib-body", "/ingest/batch", as_json([reading(pad="x" * (10 * MIB))]), 413, None),
    Hostile("gzip-bomb", "/ingest/batch", gzip_bomb(200 * MIB), 413, None,
            headers=JSON | {"Content-Encoding": "gzip"}),
    Hostile("nan", "/ingest", b'{"device_id": "hostile-1", "temperature_c": NaN}', (400, 422),
            None),
    Hostile("infinity", "/ingest", b'{"device_id": "hostile-1", "temperature_c": Infinity}',
            (400, 422), None),
    Hostile("huge-number", "/ingest", b'{"device_id": "hostile-1", "temperature_c": 1e400}',
            400, "body"),
    Hostile("invalid-utf8", "/ingest", b'{"device_id": "hostile-\xff\xfe", "temperature_c": 1}',
            (400, 422), None),
    Hostile("control-characters-in-device-id", "/ingest",
            as_json(reading(device_id="dev\x00\x1b[31m")), 422, "device_id"),
    Hostile("very-long-device-id", "/ingest", as_json(reading(device_id="d" * 10_000)), 422,
            "device_id"),
    Hostile("hundred-thousand-tags", "/ingest",
            as_json(reading(tags=[f"t{i}" for i in range(100_000)])), (413, 422), None),
    Hostile("year-one", "/ingest", as_json(reading(ts="0001-01-01T00:00:00Z")), 422, "ts"),
    Hostile("year-9999", "/ingest", as_json(reading(ts="9999-12-31T23:59:59Z")), 422, "ts"),
    Hostile("timestamp-out-of-range", "/ingest", as_json(reading(ts=1e20)), 422, "ts"),
    Hostile("wrong-content-type", "/ingest", as_json(reading()), (415, 422), None,
            headers={"Content-Type": "text/plain"}),
    Hostile("form-body", "/ingest", b"device_id=hostile-1&temperature_c=1", (415, 422), None,
            headers={"Content-Type": "application/x-www-form-urlencoded"}),
]  # fmt: skip


def error_fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body.get("errors", [])]


def assert_clear_refusal(response: Any, case: Hostile) -> None:
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, (case.id, response.status_code, response.text[:300])
    body = response.json()
    if response.status_code == 200:
        # A batch: the good reading is taken, the hostile one refused by name.
        invalid = [r for r in body["results"] if r["status"] == "invalid"]
        assert body["stored"] == 1 and len(invalid) == 1, body
        assert case.field in [e["field"] for e in invalid[0]["errors"]], body
        return
    assert body["detail"], body
    assert all(e["reason"] for e in body["errors"]), body
    if case.field is not None:
        assert any(case.field in f for f in error_fields(body)), (case.id, body)


@pytest.fixture
def ingestion(service_env: dict) -> Iterator[TestClient]:
    with ingestion_client(IngestionSettings(**service_env)) as client:
        yield client


@pytest.mark.parametrize("case", INGEST_CASES, ids=[c.id for c in INGEST_CASES])
def test_ingestion_refuses_hostile_input_clearly_and_keeps_serving(
    ingestion: TestClient, case: Hostile
) -> None:
    response = ingestion.post(case.path, content=case.body, headers=case.headers)
    assert_clear_refusal(response, case)
    assert ingestion.post("/ingest", json=reading()).status_code in (200, 202)
    assert ingestion.get("/health").status_code == 200


QUERY_CASES = [
    ("/telemetry", {"device_id[$ne]": "x"}),
    ("/telemetry", {"device_id": '{"$ne": null}'}),
    ("/telemetry", {"device_id": "$ne"}),
    ("/devices", {"tag": '{"$gt": ""}'}),
    ("/devices", {"id_prefix": ".*"}),
    ("/alerts", {"device_id": '{"$where": "1"}'}),
    ("/aggregated", {"device_id": '{"$ne": null}', "metric": "temperature_c"}),
]


@pytest.fixture
def dashboard(service_env: dict) -> Iterator[TestClient]:
    with TestClient(create_dashboard(DashboardSettings(**service_env))) as client:
        yield client


@pytest.mark.parametrize("path, params", QUERY_CASES, ids=[f"{p}?{q}" for p, q in QUERY_CASES])
def test_dashboard_query_strings_never_become_operators(
    ingestion: TestClient, dashboard: TestClient, path: str, params: dict[str, str]
) -> None:
    # Something stored that an operator would match, so a leak would show.
    assert ingestion.post("/ingest", json=reading(tags=["room:1"])).status_code in (200, 202)
    response = dashboard.get(path, params=params)
    assert response.status_code in (200, 422), response.text[:300]
    if response.status_code == 200:
        assert response.json()["count"] == 0, response.text[:300]
    else:
        assert error_fields(response.json()), response.text
    assert dashboard.get("/health").status_code == 200


ADMIN_KEY = "admin-" + "q3Vt8Lm2Xz6Rk9Pw4Hy7Jc1N"


def write_operations(client: TestClient) -> list[tuple[str, str]]:
    """Every write the app documents, its path parameters filled in."""
    operations = []
    for path, methods in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method in methods:
            if method in ("post", "put", "patch", "delete"):
                filled = "/".join("x" if part.startswith("{") else part for part in path.split("/"))
                operations.append((method.upper(), filled))
    return operations


def refused_until_keys_load(client: TestClient, method: str, path: str, headers: dict) -> Any:
    # 503 only while the key cache has not loaded yet (right after start).
    for _ in range(100):
        response = client.request(method, path, json={}, headers=headers)
        if response.status_code != 503:
            return response
    return response


def test_no_write_endpoint_of_either_api_answers_without_a_valid_key(
    service_env: dict, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = {"api_keys_required": True, "admin_api_key": ADMIN_KEY, "api_keys_refresh_s": 0.2}
    with ingestion_client(IngestionSettings(**service_env, **keys)) as ingestion:
        issued = ingestion.post(
            "/admin/keys",
            json={"name": "gateway", "devices": ["hostile-1"]},
            headers={"X-API-Key": ADMIN_KEY},
        )
        assert issued.status_code == 201
        device_key = issued.json()["api_key"]
        apps = {"ingestion-api": ingestion}
        with TestClient(create_dashboard(DashboardSettings(**service_env, **keys))) as dashboard:
            apps["dashboard-api"] = dashboard
            checked = 0
            for name, client in apps.items():
                operations = write_operations(client)
                assert operations, name
                for method, path in operations:
                    for headers in ({}, {"X-API-Key": "tk_" + "0" * 40}):
                        response = refused_until_keys_load(client, method, path, headers)
                        assert response.status_code == 401, (name, method, path, response.text)
                        checked += 1
                    if path.startswith("/admin") or name == "dashboard-api":
                        # A device's key is no admin's, nor an operator's on the dashboard.
                        response = refused_until_keys_load(
                            client, method, path, {"X-API-Key": device_key}
                        )
                        assert response.status_code in (401, 403), (name, method, path)
                        assert device_key not in response.text
            assert checked >= 20
        other_device = ingestion.post(
            "/ingest", json=reading(device_id="hostile-2"), headers={"X-API-Key": device_key}
        )
        assert other_device.status_code == 403
        listed = ingestion.get("/admin/keys", headers={"X-API-Key": ADMIN_KEY})
        assert device_key not in listed.text
    # Issued, used and refused above: never written to a log line (of which there were some).
    assert caplog.records
    assert device_key not in caplog.text
    assert ADMIN_KEY not in caplog.text
