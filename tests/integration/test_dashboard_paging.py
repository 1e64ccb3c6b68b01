"""Cursor pagination, tag search, device events and open alert counts against a real MongoDB.

The documents are written in the shapes the aggregator and alerts workers write
(their flows are tested in test_dashboard_queries.py); writing them directly
lets these tests put ties, tags and late arrivals exactly where paging must
cope with them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from dashboard_api.app import create_app
from dashboard_api.paging import decode_cursor, keyset_page, keyset_query
from dashboard_api.rollup_pages import SORT_KEY, rollup_page, rollup_query
from dashboard_api.system_stats import ACTIVE_ALERTS_CAP
from fastapi.testclient import TestClient
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.resolutions import DEFAULT_PLAN
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    RowSelection,
    bucket_document,
    windows_of,
)
from telemetry_common.domain.timefmt import iso_z, utcnow
from telemetry_common.infra.mongo import (
    ALERTS,
    DEVICES,
    LEGACY_ROLLUPS,
    RAW,
    ROLLUPS,
    ensure_indexes,
)
from telemetry_common.infra.settings import DashboardSettings
from telemetry_tools.servers import MongoServer
from telemetry_tools.testing import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


def raw(event_id: str, device_id: str, seconds: int, tags: list[str] | None = None) -> dict:
    ts = T0 + timedelta(seconds=seconds)
    return {
        "_id": event_id,
        "project_id": DEFAULT_PROJECT,
        "device_id": device_id,
        "ts": ts,
        "received_at": ts + timedelta(milliseconds=100),
        "metrics": {"temperature_c": float(seconds)},
        "tags": tags or [],
        "_src": "0:0",
    }


# Three readings share a timestamp: a page boundary falls inside the tie.
READINGS = [
    raw("e01", "p-1", 0, ["room:1"]),
    raw("e02", "p-1", 10, ["room:1", "floor:2"]),
    raw("e03", "p-1", 20),
    raw("e04", "p-1", 20, ["room:1"]),
    raw("e05", "p-1", 20),
    raw("e06", "p-2", 30, ["room:1"]),
    raw("e07", "p-1", 40),
]


def rollup(device_id: str, minute: int, metrics: tuple[str, ...] = ("temperature_c",)) -> dict:
    """A minute bucket as the aggregator stores it: each metric folded from one value."""
    start = T0 + timedelta(minutes=minute)
    folded = {}
    for offset, metric in enumerate(metrics):
        one = Rollup()
        one.add(float(minute * 10 + offset), start + timedelta(seconds=5))
        folded[metric] = one.to_fields()
    return bucket_document(
        project_id=DEFAULT_PROJECT,
        device_id=device_id,
        resolution="1m",
        start=start,
        metrics=folded,
        applied={"0": minute},
        epoch=1,
        now=start + timedelta(seconds=30),
        # Kept forever: with a retention these 2025 buckets would already be expired,
        # and the store's TTL monitor (every 60 s) would delete them mid-test.
        keep_for=None,
        windows=windows_of(start, DEFAULT_PLAN.derived_from("1m")),
    )


# p-1's buckets hold two metrics: a page of rows may end inside a bucket.
ROLLUPS_SEEDED = [
    *[rollup("p-1", m, ("temperature_c", "humidity")) for m in (0, 1, 2)],
    *[rollup("p-2", m) for m in (0, 1, 2)],
    rollup("p-3", 1),  # a tie on the bucket start
]


def alert(alert_id: str, device_id: str, seconds: int, status: str) -> dict:
    at = T0 + timedelta(seconds=seconds)
    return {
        "_id": alert_id,
        "alert_id": alert_id,
        "project_id": DEFAULT_PROJECT,
        "device_id": device_id,
        "sensor_type": "temperature",
        "value": 61.0,
        "threshold": 50.0,
        "alert_type": "temperature_high",
        "severity": "warning",
        "message": "hot",
        "timestamp": at,
        "created_at": at,
        "status": status,
        "notified": True,
    }


def device(device_id: str, tags: list[str] | None = None) -> dict:
    doc = {
        "_id": device_id,
        "project_id": DEFAULT_PROJECT,
        "device_id": device_id,
        "first_seen": T0,
        "last_seen": T0,
        "reading_count": 1,
        "last_values": {"temperature_c": 1.0},
        "last_value_ts": {"temperature_c": T0},
    }
    if tags:
        doc["tags"] = tags
    return doc


ALERTS_SEEDED = [
    alert("a1", "p-1", 0, "active"),
    alert("a2", "p-1", 5, "active"),
    alert("a3", "p-1", 5, "resolved"),
    alert("a4", "p-2", 5, "active"),
    alert("a5", "p-3", 9, "acknowledged"),
]


@pytest.fixture
async def seeded(db: AsyncDatabase) -> AsyncDatabase:
    await db[RAW].insert_many(READINGS)
    await db[ROLLUPS].insert_many(ROLLUPS_SEEDED)
    await db[ALERTS].insert_many(ALERTS_SEEDED)
    await db[DEVICES].insert_many(
        [device("p-1", ["room:1"]), device("p-2"), device("p-3"), device("p-5")]
    )
    return db


@pytest.fixture
def api(seeded: AsyncDatabase, mongo_server: MongoServer) -> Iterator[TestClient]:
    settings = DashboardSettings(
        mongo_url=mongo_server.url, mongo_db=seeded.name, max_page_size=50, stats_refresh_s=0.2
    )
    with TestClient(create_app(settings)) as client:
        yield client


def ok(response: Any) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _key(item: dict, key: str) -> str:
    # Rollups carry no id of their own in the API: a row is device, start and metric.
    if key == "_id":
        return f"{item['device_id']}@{item['timestamp']}/{item['sensor_type']}"
    return item[key]


def walk(api: TestClient, path: str, params: dict, key: str) -> list[str]:
    """Every item of a listing, page after page, by ``key``."""
    seen: list[str] = []
    cursor = None
    while True:
        body = ok(api.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        assert body["count"] == len(body["data"])
        seen += [_key(item, key) for item in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


@pytest.mark.parametrize(
    ("path", "params", "key"),
    [
        ("/telemetry", {}, "event_id"),
        ("/devices/p-1/telemetry", {}, "event_id"),
        ("/aggregated", {}, "_id"),
        ("/aggregated", {"metric": "temperature_c"}, "_id"),
        ("/aggregated", {"device_id": "p-1"}, "_id"),
        ("/devices/p-1/aggregates", {}, "_id"),
        ("/devices/p-1/aggregates", {"metric": "humidity"}, "_id"),
        # Merged from 1m buckets when read: a page may end inside a device's window.
        ("/aggregated", {"resolution": "5m"}, "_id"),
        ("/aggregated", {"resolution": "15m", "metric": "temperature_c"}, "_id"),
        ("/alerts", {}, "alert_id"),
        ("/devices", {}, "device_id"),
        ("/devices", {"id_prefix": "p-"}, "device_id"),
        ("/v1/search", {"tag": "room:1"}, "event_id"),
        ("/v1/devices/p-1/events", {}, "event_id"),
    ],
)
def test_pages_walk_the_whole_listing_once_in_order(
    api: TestClient, path: str, params: dict, key: str
) -> None:
    everything = ok(api.get(path, params={**params, "limit": 50}))
    assert everything["next_cursor"] is None and everything["count"] >= 3
    expected = [_key(d, key) for d in everything["data"]]
    assert len(set(expected)) == len(expected)
    for size in (1, 2, 3):
        assert walk(api, path, {**params, "limit": size}, key) == expected


def test_rollup_rows_are_newest_first_then_by_device_and_metric_descending(
    api: TestClient,
) -> None:
    listed = [_key(row, "_id") for row in ok(api.get("/aggregated"))["data"]]
    at = "2025-01-15T10:0{}:00.000Z".format
    assert listed == [
        f"p-2@{at(2)}/temperature_c",
        f"p-1@{at(2)}/temperature_c",
        f"p-1@{at(2)}/humidity",
        f"p-3@{at(1)}/temperature_c",
        f"p-2@{at(1)}/temperature_c",
        f"p-1@{at(1)}/temperature_c",
        f"p-1@{at(1)}/humidity",
        f"p-2@{at(0)}/temperature_c",
        f"p-1@{at(0)}/temperature_c",
        f"p-1@{at(0)}/humidity",
    ]
    one_device = ok(api.get("/devices/p-1/aggregates", params={"limit": 1}))
    assert [_key(row, "_id") for row in one_device["data"]] == [f"p-1@{at(2)}/temperature_c"]
    # The page ended inside the 10:02 bucket: the next one starts with its other metric.
    rest = ok(
        api.get("/devices/p-1/aggregates", params={"limit": 2, "cursor": one_device["next_cursor"]})
    )
    assert [_key(row, "_id") for row in rest["data"]] == [
        f"p-1@{at(2)}/humidity",
        f"p-1@{at(1)}/temperature_c",
    ]


# What a row has always held, in the order served: RollupOut's fields, then the
# others in the order the layout before stored them (a document per metric).
SERVED_ROLLUP_FIELDS = [
    "device_id",
    "sensor_type",
    "resolution",
    "timestamp",
    "count",
    "sum",
    "min",
    "max",
    "average",
    "stddev",
    "first",
    "last",
    "p50",
    "p95",
    "p99",
    "first_ts",
    "last_ts",
    "updated_at",
]


def test_a_rollup_row_serves_the_fields_it_always_did(api: TestClient) -> None:
    window = {"from": "2025-01-15T10:01:00Z", "to": "2025-01-15T10:02:00Z"}
    [row] = ok(api.get("/devices/p-1/aggregates", params={**window, "metric": "humidity"}))["data"]
    assert list(row) == SERVED_ROLLUP_FIELDS
    assert {name: row[name] for name in SERVED_ROLLUP_FIELDS if name[0] != "p"} == {
        "device_id": "p-1",
        "sensor_type": "humidity",
        "resolution": "1m",
        "timestamp": "2025-01-15T10:01:00.000Z",
        "count": 1,
        "sum": 11.0,
        "min": 11.0,
        "max": 11.0,
        "average": 11.0,
        "stddev": 0.0,
        "first": 11.0,
        "first_ts": "2025-01-15T10:01:05.000Z",
        "last": 11.0,
        "last_ts": "2025-01-15T10:01:05.000Z",
        "updated_at": "2025-01-15T10:01:30.000Z",
    }
    assert all(abs(row[p] - 11.0) <= 0.01 * 11.0 for p in ("p50", "p95", "p99"))
    # The same row, read with every metric of its bucket or across devices.
    for path, params in [
        ("/devices/p-1/aggregates", window),
        ("/aggregated", window),
        ("/aggregated", {**window, "metric": "humidity", "device_id": "p-1"}),
    ]:
        assert row in ok(api.get(path, params=params))["data"], (path, params)


def test_rollup_time_ranges_hold_the_buckets_starting_in_them(api: TestClient) -> None:
    window = {"from": "2025-01-15T10:00:00.500Z", "to": "2025-01-15T10:02:00Z"}
    for path in ("/devices/p-1/aggregates", "/aggregated"):
        rows = ok(api.get(path, params={**window, "metric": "temperature_c"}))["data"]
        assert {row["timestamp"] for row in rows} == {"2025-01-15T10:01:00.000Z"}, path
    assert ok(api.get("/devices/p-9/aggregates"))["data"] == []
    assert ok(api.get("/aggregated", params={"resolution": "30m"}))["data"] == []


def test_a_merged_resolution_serves_its_window_as_one_bucket(api: TestClient) -> None:
    # p-1 has minute buckets 10:00, 10:01 and 10:02; temperature 0, 10 and 20.
    expected = {
        "device_id": "p-1",
        "sensor_type": "temperature_c",
        "resolution": "5m",
        "timestamp": "2025-01-15T10:00:00.000Z",
        "count": 3,
        "sum": 30.0,
        "min": 0.0,
        "max": 20.0,
        "average": 10.0,
        "first": 0.0,
        "last": 20.0,
        "first_ts": "2025-01-15T10:00:05.000Z",
        "last_ts": "2025-01-15T10:02:05.000Z",
        "updated_at": "2025-01-15T10:02:30.000Z",
    }
    for path, params in [
        ("/devices/p-1/aggregates", {"resolution": "5m", "metric": "temperature_c"}),
        ("/devices/p-1/aggregates", {"resolution": "5m"}),
        ("/aggregated", {"resolution": "5m", "device_id": "p-1", "metric": "temperature_c"}),
        ("/aggregated", {"resolution": "5m"}),
    ]:
        rows = [
            r
            for r in ok(api.get(path, params=params))["data"]
            if (r["device_id"], r["sensor_type"]) == ("p-1", "temperature_c")
        ]
        assert len(rows) == 1, (path, params)
        assert {k: rows[0][k] for k in expected} == expected, (path, params)
        assert abs(rows[0]["stddev"] - (200 / 3) ** 0.5) < 1e-9
    # One device's window, a row a page: the cursor resumes inside the window.
    whole = ok(api.get("/devices/p-1/aggregates", params={"resolution": "5m"}))["data"]
    assert [r["sensor_type"] for r in whole] == ["temperature_c", "humidity"]
    walked = walk(api, "/devices/p-1/aggregates", {"resolution": "5m", "limit": 1}, "_id")
    assert walked == [_key(r, "_id") for r in whole]
    # A range holds the merged buckets that start in it, as for stored ones.
    later = {"resolution": "5m", "from": "2025-01-15T10:00:00.001Z"}
    assert ok(api.get("/devices/p-1/aggregates", params=later))["data"] == []
    assert ok(api.get("/aggregated", params=later))["data"] == []


def test_v1_aggregate_merges_one_metric_of_the_stored_buckets(api: TestClient) -> None:
    window = {"from_time": "2025-01-15T10:00:00Z", "to_time": "2025-01-15T10:04:00Z"}
    one = ok(
        api.get(
            "/v1/metrics/aggregate",
            params={**window, "metric": "humidity", "device_id": "p-1", "interval": "2m"},
        )
    )
    assert [(b["start"], b["count"], b["sum"], b["min"], b["max"]) for b in one["buckets"]] == [
        ("2025-01-15T10:00:00.000Z", 2, 12.0, 1.0, 11.0),
        ("2025-01-15T10:02:00.000Z", 1, 21.0, 21.0, 21.0),
    ]
    fleet = ok(
        api.get(
            "/v1/metrics/aggregate", params={**window, "metric": "temperature_c", "interval": "2m"}
        )
    )
    assert [(b["start"], b["count"], b["sum"]) for b in fleet["buckets"]] == [
        ("2025-01-15T10:00:00.000Z", 5, 30.0),
        ("2025-01-15T10:02:00.000Z", 2, 40.0),
    ]


def test_readings_are_newest_first_with_ties_in_id_order(api: TestClient) -> None:
    listed = [d["event_id"] for d in ok(api.get("/telemetry"))["data"]]
    assert listed == ["e07", "e06", "e05", "e04", "e03", "e02", "e01"]


async def test_paging_is_stable_while_data_arrives(api: TestClient, seeded: AsyncDatabase) -> None:
    first = ok(api.get("/telemetry", params={"limit": 3}))
    assert [d["event_id"] for d in first["data"]] == ["e07", "e06", "e05"]
    # Newer readings, and one tied with the page's last reading but sorting before it.
    await seeded[RAW].insert_many(
        [raw("e99", "p-1", 50), raw("e08", "p-1", 20), raw("e00", "p-9", 60)]
    )
    rest = walk(api, "/telemetry", {"limit": 2, "cursor": first["next_cursor"]}, "event_id")
    assert rest == ["e04", "e03", "e02", "e01"]

    devices = ok(api.get("/devices", params={"limit": 2}))
    assert [d["device_id"] for d in devices["data"]] == ["p-1", "p-2"]
    await seeded[DEVICES].insert_many([device("p-0"), device("p-4")])
    rest = walk(api, "/devices", {"limit": 2, "cursor": devices["next_cursor"]}, "device_id")
    assert rest == ["p-3", "p-4", "p-5"]


def test_a_cursor_keeps_the_filters_and_range_of_the_request(api: TestClient) -> None:
    params = {"device_id": "p-1", "from": "2025-01-15T10:00:10Z", "to": "2025-01-15T10:00:40Z"}
    assert walk(api, "/telemetry", {**params, "limit": 1}, "event_id") == [
        "e05",
        "e04",
        "e03",
        "e02",
    ]
    assert walk(api, "/alerts", {"status": "active", "limit": 1}, "alert_id") == ["a4", "a2", "a1"]


def test_tag_filters(api: TestClient) -> None:
    tagged = [d["event_id"] for d in ok(api.get("/telemetry", params={"tag": "room:1"}))["data"]]
    assert tagged == ["e06", "e04", "e02", "e01"]
    one_device = ok(api.get("/devices/p-1/telemetry", params={"tag": "floor:2"}))["data"]
    assert [d["event_id"] for d in one_device] == ["e02"]
    assert [d["device_id"] for d in ok(api.get("/devices", params={"tag": "room:1"}))["data"]] == [
        "p-1"
    ]


def test_v1_search_and_events_take_from_time_and_to_time(api: TestClient) -> None:
    search = ok(
        api.get(
            "/v1/search",
            params={
                "tag": "room:1",
                "from_time": "2025-01-15T10:00:05Z",
                "to_time": "2025-01-15T10:00:30Z",
            },
        )
    )
    assert [(d["event_id"], d["ts"]) for d in search["data"]] == [
        ("e04", "2025-01-15T10:00:20.000Z"),
        ("e02", "2025-01-15T10:00:10.000Z"),
    ]
    events = ok(
        api.get("/v1/devices/p-1/events", params={"from_time": "2025-01-15T10:00:20Z", "limit": 2})
    )
    assert [d["event_id"] for d in events["data"]] == ["e07", "e05"]
    assert events["next_cursor"] is not None
    assert ok(api.get("/v1/devices/nobody/events"))["data"] == []


def test_devices_carry_their_open_alert_count(api: TestClient) -> None:
    devices = {d["device_id"]: d for d in ok(api.get("/devices"))["data"]}
    assert {name: d["open_alerts"] for name, d in devices.items()} == {
        "p-1": 2,
        "p-2": 1,
        "p-3": 0,  # acknowledged is not open
        "p-5": 0,
    }
    one = ok(api.get("/devices/p-1"))
    assert (one["open_alerts"], one["reading_count"], one["last_values"]) == (
        2,
        1,
        {"temperature_c": 1.0},
    )
    assert "last_value_ts" not in one and "_id" not in one


def test_devices_found_by_id_prefix(api: TestClient) -> None:
    found = ok(api.get("/devices", params={"id_prefix": "p-"}))
    assert [d["device_id"] for d in found["data"]] == ["p-1", "p-2", "p-3", "p-5"]
    assert [d["device_id"] for d in ok(api.get("/devices?id_prefix=p-3"))["data"]] == ["p-3"]
    assert ok(api.get("/devices", params={"id_prefix": "q"}))["data"] == []
    second = ok(api.get("/devices", params={"id_prefix": "p-", "limit": 2}))["next_cursor"]
    rest = ok(api.get("/devices", params={"id_prefix": "p-", "limit": 2, "cursor": second}))
    assert [d["device_id"] for d in rest["data"]] == ["p-3", "p-5"]


def cursor_of(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("path", "cursor", "reason"),
    [
        ("/telemetry", "!!!", "not a cursor"),
        ("/telemetry", "bm90IGpzb24", "not a cursor"),  # base64 of "not json"
        ("/telemetry", cursor_of("ts", "2025-01-15T10:00:00Z"), "not a cursor"),
        ("/telemetry", cursor_of("ts", "yesterday", "e01"), "not a cursor"),
        ("/telemetry", cursor_of("ts", "2025-01-15T10:00:00Z", {"$ne": None}), "not a cursor"),
        ("/telemetry", cursor_of("ts", {"$gt": ""}, "e01"), "not a cursor"),
        ("/devices", cursor_of("_id", None, {"$gt": ""}), "not a cursor"),
        ("/devices", cursor_of("_id", "2025-01-15T10:00:00Z", "p-1"), "not a cursor"),
        ("/alerts", cursor_of("ts", "2025-01-15T10:00:00Z", "e01"), "another listing"),
        ("/telemetry", "x" * 600, "at most 512"),
    ],
)
def test_bad_cursors_get_422_naming_cursor(
    api: TestClient, path: str, cursor: str, reason: str
) -> None:
    response = api.get(path, params={"cursor": cursor})
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == "cursor" and reason in e["reason"] for e in errors), errors


@pytest.mark.parametrize(
    "path",
    ["/telemetry", "/devices/p-1/telemetry", "/aggregated", "/alerts", "/devices"],
)
def test_bracketed_operator_parameters_are_not_filters(api: TestClient, path: str) -> None:
    # PHP-style `field[$op]=` names are not parameters this API knows: ignored,
    # the answer is the unfiltered listing, never a MongoDB operator.
    plain = ok(api.get(path))
    for name in ("device_id[$gt]", "device_id[$ne]", "status[$ne]", "tag[$exists]"):
        assert ok(api.get(f"{path}?{name}=")) == plain


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/telemetry", {"device_id": '{"$ne": null}'}, "device_id"),
        ("/devices/p-1/aggregates", {"metric": '{"$ne": ""}'}, "metric"),
        ("/alerts", {"status": '{"$ne": "active"}'}, "status"),
        ("/v1/search", {"tag": "room:1", "from_time": "$gt"}, "from_time"),
        ("/v1/search", {"tag[$ne]": "x"}, "tag"),
        ("/v1/search", {"tag": "room:1", "limit": "51"}, "limit"),
        (
            "/v1/devices/p-1/events",
            {"from_time": "2025-01-16T00:00:00Z", "to_time": "2025-01-15T00:00:00Z"},
            "from_time",
        ),
        ("/v1/devices/$where/events", {}, "path.device_id"),
        ("/devices", {"id_prefix": '{"$gt": ""}'}, "id_prefix"),
    ],
)
def test_operator_strings_get_422_naming_the_parameter(
    api: TestClient, path: str, params: dict, field: str
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert any(e["field"] == field for e in response.json()["errors"]), response.json()


def test_an_operator_string_as_a_tag_is_only_a_tag(api: TestClient) -> None:
    # A tag may be any printable text; as a value it is compared, never evaluated.
    for tag in ('{"$ne": null}', "$ne", "$where"):
        assert ok(api.get("/v1/search", params={"tag": tag}))["data"] == []
        assert ok(api.get("/telemetry", params={"tag": tag}))["data"] == []


def _stages(plan: dict) -> list[str]:
    found = [plan["stage"]] if "stage" in plan else []
    for child in ("inputStage", "queryPlan"):
        if child in plan:
            found += _stages(plan[child])
    for sub in plan.get("inputStages", []):
        found += _stages(sub)
    return found


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ({"project_id": DEFAULT_PROJECT}, "project_ts_id"),
        ({"project_id": DEFAULT_PROJECT, "device_id": "deep"}, "project_device_ts_id"),
        ({"project_id": DEFAULT_PROJECT, "tags": "t:deep"}, "project_tags_ts_id"),
    ],
)
async def test_a_deep_page_reads_only_its_own_index_keys(
    db: AsyncDatabase, query: dict, index: str
) -> None:
    await ensure_indexes(db, None)
    readings = [raw(f"d{i:03}", "deep", i // 2, ["t:deep"]) for i in range(300)]  # ties in pairs
    await db[RAW].insert_many(readings)
    _, cursor = await keyset_page(db[RAW], query, sort_key="ts", limit=201, cursor=None)
    assert cursor is not None
    page_query, sort = keyset_query(query, sort_key="ts", cursor=cursor)
    explained = await db[RAW].find(page_query).sort(sort).limit(21).explain()
    stages = _stages(explained["queryPlanner"]["winningPlan"])
    assert "SORT" not in stages and "IXSCAN" in stages, explained["queryPlanner"]
    assert index in str(explained["queryPlanner"]["winningPlan"])
    # Not the 201 keys before the cursor: the scan starts at the cursor's key.
    assert explained["executionStats"]["totalKeysExamined"] <= 21 + 1


@pytest.mark.parametrize(
    ("device_id", "index"), [("deep", "_id_"), (None, "project_resolution_ts_id")]
)
async def test_a_deep_rollup_page_reads_only_its_own_index_keys(
    db: AsyncDatabase, device_id: str | None, index: str
) -> None:
    await ensure_indexes(db, None)
    # Two devices with buckets at the same minutes (ties), two metrics in each.
    await db[ROLLUPS].insert_many(
        [
            rollup(device, minute, ("temperature_c", "humidity"))
            for minute in range(150)
            for device in ("deep", "deep-2")
        ]
    )
    rows, cursor = await rollup_page(
        db[ROLLUPS], "1m", RowSelection(device_id=device_id), limit=201, cursor=None
    )
    assert len(rows) == 201 and cursor is not None
    query = rollup_query("1m", RowSelection(device_id=device_id), decode_cursor(SORT_KEY, cursor))
    explained = await db[ROLLUPS].find(query.filter).sort(query.sort).limit(12).explain()
    stages = _stages(explained["queryPlanner"]["winningPlan"])
    assert "SORT" not in stages and "IXSCAN" in stages, explained["queryPlanner"]
    assert index in str(explained["queryPlanner"]["winningPlan"])
    # Not the ~100 buckets before the cursor: the scan starts at the cursor's bucket.
    assert explained["executionStats"]["totalKeysExamined"] <= 12 + 1


async def test_rollups_get_the_layouts_indexes_and_the_legacy_collection_is_left_alone(
    db: AsyncDatabase,
) -> None:
    await db[LEGACY_ROLLUPS].create_index([("device_id", 1), ("timestamp", -1)], name="device_ts")
    await ensure_indexes(db, None)
    await ensure_indexes(db, None)
    indexes = {ix["name"]: ix async for ix in await db[ROLLUPS].list_indexes()}
    assert set(indexes) == {"_id_", "project_resolution_ts_id", "expire_at_ttl"}
    assert list(indexes["project_resolution_ts_id"]["key"].items()) == [
        ("project_id", 1),
        ("resolution", 1),
        ("timestamp", -1),
        ("_id", -1),
    ]
    assert indexes["expire_at_ttl"]["expireAfterSeconds"] == 0
    legacy = {ix["name"] async for ix in await db[LEGACY_ROLLUPS].list_indexes()}
    assert legacy == {"_id_", "device_ts"}


async def test_indexes_without_the_id_tie_break_are_replaced(db: AsyncDatabase) -> None:
    await db[RAW].create_index([("device_id", 1), ("ts", -1)], name="device_ts")
    await db[RAW].create_index([("device_id", 1), ("ts", -1), ("_id", -1)], name="device_ts_id")
    await db[ALERTS].create_index([("status", 1), ("created_at", -1)], name="status_created")
    await db[ALERTS].create_index(
        [("status", 1), ("created_at", -1), ("_id", -1)], name="status_created_id"
    )
    await ensure_indexes(db, None)
    await ensure_indexes(db, None)  # a second service starting: nothing left to drop
    raw_indexes = {ix["name"] async for ix in await db[RAW].list_indexes()}
    alert_indexes = {ix["name"] async for ix in await db[ALERTS].list_indexes()}
    assert {"project_device_ts_id", "project_tags_ts_id", "project_ts_id"} <= raw_indexes
    assert "device_ts" not in raw_indexes and "device_ts_id" not in raw_indexes
    assert "project_status_created_id" in alert_indexes
    assert "status_created" not in alert_indexes and "status_created_id" not in alert_indexes


async def test_stats_count_active_alerts_up_to_a_cap(
    api: TestClient, seeded: AsyncDatabase
) -> None:
    stats = ok(api.get("/stats"))
    assert (stats["active_alerts"], stats["active_alerts_capped"]) == (3, False)
    assert (stats["total_readings"], stats["total_alerts"], stats["total_devices"]) == (7, 5, 4)
    assert stats["total_aggregates"] == len(ROLLUPS_SEEDED)  # buckets, every metric in one
    storm = [alert(f"s{i}", f"s-{i % 50}", i, "active") for i in range(ACTIVE_ALERTS_CAP)]
    await seeded[ALERTS].insert_many(storm)
    stored = iso_z(utcnow())
    # Served from a snapshot: the figures of one gathered after the storm was stored.
    stats = await stats_as_of(api, stored)
    assert (stats["active_alerts"], stats["active_alerts_capped"]) == (ACTIVE_ALERTS_CAP, True)


async def stats_as_of(api: TestClient, moment: str) -> dict[str, Any]:
    """/stats once its figures were gathered after ``moment``."""
    latest: dict[str, Any] = {}

    async def gathered_since() -> bool:
        latest.update(ok(api.get("/stats")))
        return latest["as_of"] > moment  # gathering began after it

    await eventually(gathered_since)
    return latest
