"""Unit tests for dashboard_api.rollup_pages: rows per metric paged over bucket documents.

``stored_after`` stands in for MongoDB: the documents a page's query returns, in
its order (what the query itself asks of a real server is tested in
tests/integration/test_dashboard_paging.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dashboard_api.paging import Position, decode_cursor, encode_cursor
from dashboard_api.rollup_pages import SORT_KEY, RowPage, rollup_query
from hypothesis import given
from hypothesis import strategies as st
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    RowSelection,
    bucket_document,
    metric_rows,
)

T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)


def bucket(device_id: str, minute: int, metrics: Iterable[str]) -> dict[str, Any]:
    start = T0 + timedelta(minutes=minute)
    fields = {}
    for value, name in enumerate(metrics):
        rollup = Rollup()
        rollup.add(float(value), start)
        fields[name] = rollup.to_fields()
    return bucket_document(
        project_id=DEFAULT_PROJECT,
        device_id=device_id,
        resolution="1m",
        start=start,
        metrics=fields,
        applied={"0": 1},
        epoch=1,
        now=start,
        keep_for=timedelta(days=7),
    )


def stored_after(
    docs: list[dict[str, Any]], metric: str | None, resume: Position | None
) -> list[dict[str, Any]]:
    """What the page's query returns: documents newest first, from the cursor's own on."""
    found = [d for d in docs if metric is None or metric in d["metrics"]]
    if resume is not None:
        found = [d for d in found if (d["timestamp"], d["_id"]) < (resume.key, resume.id)]
    return sorted(found, key=lambda d: (d["timestamp"], d["_id"]), reverse=True)


def one_page(
    docs: list[dict[str, Any]], limit: int, metric: str | None, cursor: str | None
) -> tuple[list[str], str | None]:
    resume = decode_cursor(SORT_KEY, cursor) if cursor else None
    page = RowPage(limit, metric, resume)
    for doc in stored_after(docs, metric, resume)[: page.documents_needed]:
        if page.add(doc):
            break
    position = page.next_position()
    return (
        [f"{r['device_id']}@{r['timestamp']:%H:%M}/{r['sensor_type']}" for r in page.rows()],
        encode_cursor(SORT_KEY, position) if position else None,
    )


def walk(docs: list[dict[str, Any]], limit: int, metric: str | None = None) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = one_page(docs, limit, metric, cursor)
        assert len(rows) <= limit
        seen += rows
        if cursor is None:
            return seen


DOCS = [
    bucket("d-1", 0, ["temperature_c", "humidity", "cpu"]),
    bucket("d-1", 1, ["temperature_c", "humidity"]),
    bucket("d-2", 1, ["humidity"]),  # a tie on the bucket start with d-1
    bucket("d-2", 2, ["temperature_c", "humidity", "cpu"]),
]


def test_rows_are_newest_first_then_device_then_metric_descending() -> None:
    assert walk(DOCS, 100) == [
        "d-2@10:02/temperature_c",
        "d-2@10:02/humidity",
        "d-2@10:02/cpu",
        "d-2@10:01/humidity",
        "d-1@10:01/temperature_c",
        "d-1@10:01/humidity",
        "d-1@10:00/temperature_c",
        "d-1@10:00/humidity",
        "d-1@10:00/cpu",
    ]


def test_a_page_may_end_inside_a_document_and_the_next_serves_the_rest_of_it() -> None:
    first, cursor = one_page(DOCS, 2, None, None)
    assert first == ["d-2@10:02/temperature_c", "d-2@10:02/humidity"]
    assert cursor is not None
    assert decode_cursor(SORT_KEY, cursor) == Position(
        T0 + timedelta(minutes=2), "default|d-2|1m|01736935320|humidity"
    )
    second, _ = one_page(DOCS, 2, None, cursor)
    assert second == ["d-2@10:02/cpu", "d-2@10:01/humidity"]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 8, 9, 10])
def test_pages_of_any_size_walk_every_row_once_in_order(limit: int) -> None:
    assert walk(DOCS, limit) == walk(DOCS, 100)


def test_a_metric_whose_name_begins_another_comes_first_as_it_always_did() -> None:
    docs = [bucket("d-1", 0, ["temp", "temp_max", "tem"])]
    assert walk(docs, 100) == ["d-1@10:00/tem", "d-1@10:00/temp", "d-1@10:00/temp_max"]
    assert walk(docs, 1) == walk(docs, 100)


def test_the_last_page_says_so_even_when_it_is_exactly_full() -> None:
    rows, cursor = one_page(DOCS, 9, None, None)
    assert len(rows) == 9 and cursor is None


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_a_metric_filter_serves_only_that_metrics_rows(limit: int) -> None:
    assert walk(DOCS, limit, "temperature_c") == [
        "d-2@10:02/temperature_c",
        "d-1@10:01/temperature_c",
        "d-1@10:00/temperature_c",
    ]
    assert walk(DOCS, limit, "cpu") == ["d-2@10:02/cpu", "d-1@10:00/cpu"]
    assert walk(DOCS, limit, "pressure") == []


device_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:",
    min_size=1,
    max_size=6,
)
metric_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=5)


@given(
    buckets=st.lists(
        st.tuples(device_ids, st.integers(0, 3), st.sets(metric_names, min_size=1, max_size=3)),
        max_size=12,
        unique_by=lambda b: (b[0], b[1]),
    ),
    limit=st.integers(1, 5),
)
def test_pages_serve_the_rows_in_the_order_of_the_layout_before(
    buckets: list[tuple[str, int, set[str]]], limit: int
) -> None:
    # Device ids that are prefixes of each other and metric names that are, ties
    # everywhere: rows come as the per-metric documents of the layout before
    # sorted, newest first by (timestamp, _id), their ids device|metric|resolution|start.
    docs = [bucket(device, minute, sorted(metrics)) for device, minute, metrics in buckets]

    def id_before(row: dict[str, Any]) -> str:
        return "|".join(
            (row["device_id"], row["sensor_type"], row["resolution"], row["timestamp"].isoformat())
        )

    rows = sorted(
        (row for doc in docs for row in metric_rows(doc)),
        key=lambda r: (r["timestamp"], id_before(r)),
        reverse=True,
    )
    expected = [f"{r['device_id']}@{r['timestamp']:%H:%M}/{r['sensor_type']}" for r in rows]
    assert walk(docs, limit) == expected


def test_a_devices_query_reads_its_id_range_down_from_the_cursors_document() -> None:
    first = rollup_query(
        "1m", RowSelection(device_id="d-1", start=T0, end=T0 + timedelta(hours=1)), None
    )
    assert first.filter == {
        "_id": {"$gte": "default|d-1|1m|01736935200", "$lt": "default|d-1|1m|01736938800"}
    }
    assert first.sort == [("_id", -1)]
    row_id = "default|d-1|1m|01736935260|humidity"
    resumed = rollup_query(
        "1m",
        RowSelection(device_id="d-1", metric="humidity", start=T0, end=T0 + timedelta(hours=1)),
        Position(T0 + timedelta(minutes=1), row_id),
    )
    assert resumed.filter == {
        "_id": {"$gte": "default|d-1|1m|01736935200", "$lt": row_id},
        "metrics.humidity": {"$exists": True},
    }


def test_a_fleet_query_reads_the_resolution_newest_first_after_the_cursor() -> None:
    resume = Position(T0, "default|d-1|1m|01736935200|humidity")
    query = rollup_query("5m", RowSelection(), resume)
    assert query.sort == [("timestamp", -1), ("_id", -1)]
    assert query.filter == {
        "$and": [
            {"project_id": "default", "resolution": "5m"},
            {
                "timestamp": {"$lte": T0},
                "$or": [{"timestamp": {"$lt": T0}}, {"_id": {"$lt": resume.id}}],
            },
        ]
    }
    assert query.projection is None


def test_with_a_metric_only_its_served_figures_are_read() -> None:
    query = rollup_query("1m", RowSelection(device_id="d-1", metric="humidity"), None)
    read = set(query.projection)
    assert {"device_id", "resolution", "timestamp", "updated_at"} <= read
    assert {"metrics.humidity.count", "metrics.humidity.p99", "metrics.humidity.last_ts"} <= read
    assert not any(
        field.endswith((".sketch", ".sum_partials", ".m2", ".mean")) or "temperature" in field
        for field in read
    )
