"""Count, distinct devices and percentiles over any window, against the readings themselves:
the aggregator folds them on real Kafka and MongoDB, the dashboard answers from its
rollups and, at the edges, the raw readings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aggregator_worker.worker import run as run_aggregator
from aiokafka import AIOKafkaProducer
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from integration.readings import publish, reading
from integration.workers import running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.mongo import DEVICES, RAW
from telemetry_common.infra.settings import AggregatorSettings, DashboardSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 15, 9, tzinfo=UTC)
DEVICES_IN_ROOM = {"w-3"}


def fleet() -> list[Reading]:
    """Three devices, a reading every 20 s for 2.5 h; w-2 also reports humidity, w-3 is
    tagged with its room."""
    out = []
    for d, device in enumerate(("w-1", "w-2", "w-3")):
        for i in range(450):
            body: dict[str, Any] = {
                "device_id": device,
                "ts": (T0 + timedelta(seconds=10 + 20 * i)).isoformat(),
                "temperature_c": 15.0 + (i * 37 + d * 11) % 200 / 10,
            }
            if device == "w-2":
                body["humidity"] = 30.0 + i % 40
            if device in DEVICES_IN_ROOM:
                body["tags"] = ["room:9"]
            out.append(reading(body))
    return out


READINGS = fleet()


def at(hms: str) -> datetime:
    h, m, s = (int(part) for part in hms.split(":"))
    return T0.replace(hour=h, minute=m, second=s)


def chosen(
    start: str, end: str, metric: str | None = None, devices: set[str] | None = None
) -> list[Reading]:
    return [
        r
        for r in READINGS
        if at(start) <= r.ts < at(end)
        and (metric is None or metric in r.metrics)
        and (devices is None or r.device_id in devices)
    ]


@pytest.fixture
async def folded(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> dict:
    await publish(producer, topics.telemetry, READINGS)

    async def all_folded() -> bool:
        counted = [doc.get("reading_count", 0) async for doc in db[DEVICES].find({})]
        return await db[RAW].count_documents({}) == len(READINGS) == sum(counted)

    async with running(run_aggregator, AggregatorSettings(**service_env, port=free_port())):
        await eventually(all_folded)
    return service_env


@pytest.fixture
def api(folded: dict) -> Iterator[TestClient]:
    with TestClient(create_app(DashboardSettings(**folded))) as client:
        yield client


def figure(api: TestClient, path: str, **params: Any) -> dict[str, Any]:
    answer = api.get(f"/v1/metrics/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def exact_percentile(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))]


def test_a_ragged_window_counts_every_reading_once(api: TestClient) -> None:
    window = {"from_time": at("09:30:15").isoformat(), "to_time": at("11:10:45").isoformat()}
    counted = figure(api, "count", metric="temperature_c", **window)
    assert counted["count"] == len(chosen("09:30:15", "11:10:45", "temperature_c"))
    # The middle hour from its 1h bucket, the minutes around it from 1m, seconds raw.
    assert counted["served_from"] == ["1h", "1m", "raw"]
    distinct = figure(api, "distinct-devices", metric="temperature_c", **window)
    assert distinct["devices"] == 3
    spread = figure(api, "p95", metric="temperature_c", **window)
    values = [r.metrics["temperature_c"] for r in chosen("09:30:15", "11:10:45")]
    assert spread["count"] == len(values)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        assert spread[name] == pytest.approx(exact_percentile(values, q), rel=0.01), name


def test_devices_a_metric_and_a_tag_narrow_the_window(api: TestClient) -> None:
    window = {"from_time": at("10:00:00").isoformat(), "to_time": at("11:00:00").isoformat()}
    pair = {"w-1", "w-2"}
    counted = figure(api, "count", metric="temperature_c", device_id=sorted(pair), **window)
    assert counted["count"] == len(chosen("10:00:00", "11:00:00", "temperature_c", pair))
    assert counted["device_ids"] == ["w-1", "w-2"] and counted["served_from"] == ["1h"]
    humid = figure(api, "distinct-devices", metric="humidity", **window)
    assert humid["devices"] == 1
    tagged = figure(api, "count", tag="room:9", **window)
    assert tagged["count"] == len(chosen("10:00:00", "11:00:00", devices=DEVICES_IN_ROOM))
    assert tagged["served_from"] == ["raw"]  # rollups keep no tags


def test_without_a_metric_every_reading_counts_and_an_empty_window_is_zero(
    api: TestClient,
) -> None:
    whole = {"from_time": at("09:00:00").isoformat(), "to_time": at("11:30:00").isoformat()}
    assert figure(api, "count", **whole)["count"] == len(READINGS)
    assert figure(api, "distinct-devices", **whole)["devices"] == 3
    later = {"from_time": at("12:00:00").isoformat(), "to_time": at("13:00:00").isoformat()}
    assert figure(api, "count", metric="temperature_c", **later)["count"] == 0
    empty = figure(api, "p95", metric="temperature_c", **later)
    assert (empty["count"], empty["p95"]) == (0, None)


def test_bad_windows_are_refused_naming_the_parameter(api: TestClient) -> None:
    inverted = api.get(
        "/v1/metrics/count",
        params={"from_time": at("11:00:00").isoformat(), "to_time": at("10:00:00").isoformat()},
    )
    assert inverted.status_code == 422
    assert inverted.json()["errors"][0]["field"] == "from_time"
    bad_device = api.get("/v1/metrics/count", params={"device_id": "no spaces"})
    assert bad_device.status_code == 422
    assert bad_device.json()["errors"][0]["field"] == "device_id"
    no_metric = api.get("/v1/metrics/p95")
    assert no_metric.status_code == 422
    assert no_metric.json()["errors"][0]["field"] == "metric"
