"""The dashboard API's queries against a real MongoDB server, with data the workers wrote."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from aggregator_worker.worker import run as run_aggregator
from aiokafka import AIOKafkaProducer
from alerts_worker.worker import run as run_alerts
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from integration.readings import publish, reading
from integration.workers import running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.rollup_layout import RowSelection, bucket_filter
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.infra.mongo import ALERTS, DEVICES, RAW, ROLLUPS
from telemetry_common.infra.settings import AggregatorSettings, AlertsSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually
from telemetry_tools.verify import recompute_all_rollups

pytestmark = pytest.mark.integration

READINGS = [
    reading(
        {"device_id": "q-1", "ts": "2025-01-15T10:00:05Z", "temperature_c": 20.0, "humidity": 40}
    ),
    reading({"device_id": "q-1", "ts": "2025-01-15T10:00:35Z", "temperature_c": 22.0}),
    reading({"device_id": "q-1", "ts": "2025-01-15T10:01:10Z", "temperature_c": 55.0}),
    reading(
        {"device_id": "q-2", "ts": "2025-01-15T10:00:00Z", "humidity": 130.0, "tags": ["room:7"]}
    ),
]


@pytest.fixture
async def seeded(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> dict:
    await publish(producer, topics.telemetry, READINGS)
    aggregator = AggregatorSettings(**service_env, port=free_port())
    alerts = AlertsSettings(**service_env, port=free_port())

    async def stored() -> dict[str, int]:
        return {
            name: await db[name].count_documents({}) for name in (RAW, ROLLUPS, DEVICES, ALERTS)
        }

    # One worker after the other, each until it has written everything the tests
    # read: the device summaries are the aggregator's last write of a batch.
    async def folded() -> bool:
        counted = [doc.get("reading_count", 0) async for doc in db[DEVICES].find({})]
        return await db[RAW].count_documents({}) == 4 and sum(counted) == 4

    async def alerted() -> bool:
        return await db[ALERTS].count_documents({}) == 2

    for run, settings, written in (
        (run_aggregator, aggregator, folded),
        (run_alerts, alerts, alerted),
    ):
        async with running(run, settings):
            try:
                await eventually(written)
            except AssertionError as exc:
                raise AssertionError(f"seeding incomplete: {await stored()}") from exc
    return service_env


@pytest.fixture
def api(seeded: dict) -> Iterator[TestClient]:
    settings = DashboardSettings(**seeded, max_page_size=50)
    with TestClient(create_app(settings)) as client:
        yield client


def test_telemetry_is_newest_first_filtered_and_iso_z(api: TestClient) -> None:
    data = api.get("/telemetry", params={"device_id": "q-1"}).json()["data"]
    assert [d["ts"] for d in data] == [
        "2025-01-15T10:01:10.000Z",
        "2025-01-15T10:00:35.000Z",
        "2025-01-15T10:00:05.000Z",
    ]
    assert all("_src" not in d and d["event_id"] for d in data)
    ranged = api.get(
        "/devices/q-1/telemetry",
        params={"from": "2025-01-15T10:00:30Z", "to": "2025-01-15T10:01:10Z", "limit": 5},
    ).json()
    assert [d["metrics"]["temperature_c"] for d in ranged["data"]] == [22.0]
    assert api.get("/telemetry", params={"limit": 2}).json()["count"] == 2


def test_device_aggregates_per_minute_bucket(api: TestClient) -> None:
    body = api.get("/devices/q-1/aggregates", params={"metric": "temperature_c"}).json()
    buckets = {b["timestamp"]: b for b in body["data"]}
    assert set(buckets) == {"2025-01-15T10:01:00.000Z", "2025-01-15T10:00:00.000Z"}
    first = buckets["2025-01-15T10:00:00.000Z"]
    assert (first["count"], first["sum"], first["min"], first["max"], first["average"]) == (
        2,
        42.0,
        20.0,
        22.0,
        21.0,
    )
    assert first["first"] == 20.0 and first["last"] == 22.0
    assert "_applied" not in first and "_v" not in first
    across = api.get("/aggregated", params={"metric": "humidity"}).json()["data"]
    assert sorted((b["device_id"], b["max"]) for b in across) == [("q-1", 40.0), ("q-2", 130.0)]


def test_alerts_filters_and_recent(api: TestClient) -> None:
    critical = api.get("/alerts", params={"severity": "critical"}).json()["data"]
    assert [(a["device_id"], a["alert_type"]) for a in critical] == [("q-2", "humidity_high")]
    by_device = api.get("/alerts", params={"device_id": "q-1"}).json()["data"]
    assert [(a["alert_type"], a["severity"], a["value"]) for a in by_device] == [
        ("temperature_c_high", "warning", 55.0)
    ]
    recent = api.get("/alerts/recent").json()["data"]
    assert len(recent) == 2 and all(a["created_at"].endswith("Z") for a in recent)


def test_devices_and_stats(api: TestClient) -> None:
    devices = {d["device_id"]: d for d in api.get("/devices").json()["data"]}
    assert devices["q-1"]["reading_count"] == 3
    assert devices["q-1"]["last_values"] == {"temperature_c": 55.0, "humidity": 40.0}
    assert devices["q-2"]["tags"] == ["room:7"]
    assert api.get("/devices/q-2").json()["first_seen"] == "2025-01-15T10:00:00.000Z"
    missing = api.get("/devices/nope")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "device_id"
    stats = api.get("/stats").json()
    assert (stats["total_readings"], stats["total_devices"], stats["total_alerts"]) == (4, 2, 2)
    assert stats["active_alerts"] == 2


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/telemetry", {"limit": 0}, "limit"),
        ("/telemetry", {"limit": 51}, "limit"),
        ("/telemetry", {"device_id": '{"$ne": null}'}, "device_id"),
        ("/telemetry", {"from": "2025-01-16T00:00:00Z", "to": "2025-01-15T00:00:00Z"}, "from"),
        ("/telemetry", {"from": "not-a-time"}, "from"),
        ("/aggregated", {"resolution": "$gt"}, "resolution"),
        ("/alerts", {"severity": "urgent"}, "severity"),
    ],
)
def test_bad_parameters_get_422_naming_the_parameter(
    api: TestClient, path: str, params: dict, field: str
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 422
    assert any(e["field"] == field for e in response.json()["errors"]), response.json()


def test_device_aggregates_carry_percentiles_and_hide_bookkeeping(api: TestClient) -> None:
    body = api.get(
        "/devices/q-1/aggregates", params={"metric": "temperature_c", "resolution": "1h"}
    ).json()
    [bucket] = body["data"]
    assert (bucket["count"], bucket["sum"], bucket["min"], bucket["max"]) == (3, 97.0, 20.0, 55.0)
    # Rank floor(q * (n - 1)) of 20, 22, 55: p50 is 22, p95 and p99 are 22 too.
    for name in ("p50", "p95", "p99"):
        assert abs(bucket[name] - 22.0) <= 0.01 * 22.0, name
    for internal in ("sketch", "sum_partials", "mean", "m2", "expire_at", "_applied"):
        assert internal not in bucket


def test_v1_aggregate_merges_stored_buckets_into_the_interval(api: TestClient) -> None:
    params = {
        "metric": "temperature_c",
        "device_id": "q-1",
        "from_time": "2025-01-15T10:00:00Z",
        "to_time": "2025-01-15T10:10:00Z",
    }
    two = api.get("/v1/metrics/aggregate", params={**params, "interval": "2m"}).json()
    assert (two["resolution"], two["count"]) == ("1m", 1)
    assert two["buckets"][0] == {
        **two["buckets"][0],
        "start": "2025-01-15T10:00:00.000Z",
        "end": "2025-01-15T10:02:00.000Z",
        "count": 3,
        "sum": 97.0,
        "min": 20.0,
        "max": 55.0,
        "avg": 97.0 / 3,
    }
    ten = api.get("/v1/metrics/aggregate", params={**params, "interval": "10m"}).json()
    # 5m is served by merging 1m buckets, so 10m is merged from those too.
    assert ten["resolution"] == "1m"
    assert [(b["start"], b["count"]) for b in ten["buckets"]] == [("2025-01-15T10:00:00.000Z", 3)]
    minutes = api.get("/v1/metrics/aggregate", params={**params, "interval": "1m"}).json()
    assert [(b["start"], b["count"], b["sum"]) for b in minutes["buckets"]] == [
        ("2025-01-15T10:00:00.000Z", 2, 42.0),
        ("2025-01-15T10:01:00.000Z", 1, 55.0),
    ]


def test_v1_aggregate_without_a_device_merges_the_fleet(api: TestClient) -> None:
    body = api.get(
        "/v1/metrics/aggregate",
        params={
            "metric": "humidity",
            "from_time": "2025-01-15T00:00:00Z",
            "to_time": "2025-01-16T00:00:00Z",
            "interval": "1d",
        },
    ).json()
    assert body["device_id"] is None
    [day] = body["buckets"]
    assert (day["count"], day["sum"], day["min"], day["max"]) == (2, 170.0, 40.0, 130.0)


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"interval": "7m"}, "interval", "does not divide a day"),
        ({"interval": "30s"}, "interval", "cannot be served"),
        ({"interval": "$gt"}, "interval", "pattern"),
        (
            {"from_time": "2025-01-16T00:00:00Z", "to_time": "2025-01-15T00:00:00Z"},
            "from_time",
            "before to_time",
        ),
        ({"from_time": "2020-01-01T00:00:00Z", "interval": "1m"}, "from_time", "at most 50"),
        ({"metric": None}, "metric", "required"),
    ],
)
def test_v1_aggregate_refuses_what_it_cannot_serve(
    api: TestClient, params: dict, field: str, reason: str
) -> None:
    query = {"metric": "temperature_c", "device_id": "q-1", "to_time": "2025-01-15T11:00:00Z"}
    query.update(params)
    response = api.get(
        "/v1/metrics/aggregate", params={k: v for k, v in query.items() if v is not None}
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert any(e["field"] == field and reason in e["reason"].lower() for e in errors), errors


async def test_each_resolution_keeps_its_own_retention(seeded: dict, db: AsyncDatabase) -> None:
    indexes = {ix["name"]: ix async for ix in await db[ROLLUPS].list_indexes()}
    assert indexes["expire_at_ttl"]["expireAfterSeconds"] == 0
    # Each index costs every bucket write: a device's buckets are an _id range.
    assert set(indexes) == {
        "_id_",
        "project_resolution_ts_id",
        "expire_at_ttl",
        "project_resolution_window_5m_id",
        "project_resolution_window_15m_id",
    }
    # 5m and 15m are merged from 1m when read, so 1m is kept as long as they are.
    keep = {"1m": timedelta(days=30), "1h": timedelta(days=365)}
    for resolution in ("5m", "15m"):
        assert not await db[ROLLUPS].find_one({"resolution": resolution}), resolution
    for resolution in ("1m", "1h", "1d"):
        docs = (
            await db[ROLLUPS]
            .find(bucket_filter(resolution, RowSelection(device_id="q-1")))
            .to_list()
        )
        assert docs, resolution
        for doc in docs:
            if resolution == "1d":
                assert "expire_at" not in doc  # kept forever
            else:
                assert doc["expire_at"] - doc["updated_at"] == keep[resolution]


def test_v1_aggregate_defaults_to_the_most_recent_buckets(api: TestClient) -> None:
    response = api.get("/v1/metrics/aggregate", params={"metric": "temperature_c"})
    body = response.json()
    assert response.status_code == 200 and body["interval"] == "1h"
    span = datetime.fromisoformat(body["to_time"]) - datetime.fromisoformat(body["from_time"])
    assert timedelta(days=1) <= span <= timedelta(days=1, hours=1)
    # Minutes: no more than the page size (50 here) of buckets, rather than a 422.
    minutes = api.get("/v1/metrics/aggregate", params={"metric": "temperature_c", "interval": "1m"})
    body = minutes.json()
    span = datetime.fromisoformat(body["to_time"]) - datetime.fromisoformat(body["from_time"])
    assert minutes.status_code == 200 and span <= timedelta(minutes=50)
    assert body["buckets"] == []  # the seeded readings are from 2025


async def test_every_served_resolution_equals_a_recomputation_from_raw(
    seeded: dict, db: AsyncDatabase
) -> None:
    # Stored (1m, 1h, 1d) or merged when read (5m, 15m): the figures are the same.
    plan = DashboardSettings().rollup_plan
    assert plan.derived
    expected = await recompute_all_rollups(db, plan.served)
    with TestClient(create_app(DashboardSettings(**seeded, max_page_size=1000))) as client:
        served = {
            (row["device_id"], row["sensor_type"], resolution, row["timestamp"]): row
            for resolution in plan.served
            for row in client.get(
                "/aggregated", params={"resolution": resolution, "limit": 1000}
            ).json()["data"]
        }
    assert len(served) == len(expected)
    for (device, metric, resolution, start), values in expected.items():
        row = served[(device, metric, resolution, iso_z(start))]
        figures = (row["count"], row["sum"], row["min"], row["max"])
        assert figures == (len(values), math.fsum(values), min(values), max(values))


def test_every_answer_carries_the_request_id_refusals_included(service_env: dict) -> None:
    with TestClient(create_app(DashboardSettings(**service_env))) as api:
        given = {"X-Request-ID": "support-ticket-42"}
        answers = {
            "listing": api.get("/devices", headers=given),
            "unknown device": api.get("/devices/nope", headers=given),
            "bad parameter": api.get("/telemetry", params={"limit": 0}, headers=given),
            "unknown path": api.get("/nowhere", headers=given),
        }
        assert [r.status_code for r in answers.values()] == [200, 404, 422, 404]
        assert {r.headers["X-Request-ID"] for r in answers.values()} == {"support-ticket-42"}
        # Without one (or with one unfit for a log line), each answer gets a fresh id.
        fresh = [api.get("/devices"), api.get("/devices", headers={"X-Request-ID": "a b"})]
        made = [r.headers["X-Request-ID"] for r in fresh]
        assert all(len(made_id) == 32 for made_id in made) and made[0] != made[1]
