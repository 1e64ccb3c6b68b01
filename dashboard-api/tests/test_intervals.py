"""Unit tests for dashboard_api.intervals: which resolution serves an interval, and merging."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from dashboard_api.intervals import choose_resolution, interval_bucket, merge_into_intervals, window
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.domain.resolutions import DEFAULT_RESOLUTIONS, bucket_start, parse_resolutions
from telemetry_common.domain.rollup import Rollup
from telemetry_common.http.api_errors import ApiError

STORED = parse_resolutions(DEFAULT_RESOLUTIONS)
T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)


def test_ten_minutes_are_merged_from_five_minute_buckets() -> None:
    assert choose_resolution("10m", STORED) == (600, "5m")
    assert choose_resolution("1h", STORED) == (3600, "1h")


@pytest.mark.parametrize(
    ("interval", "reason"),
    [("7m", "does not divide a day"), ("30s", "cannot be served"), ("soon", "is not like")],
)
def test_an_interval_that_cannot_be_served_is_a_422_naming_interval(
    interval: str, reason: str
) -> None:
    with pytest.raises(ApiError) as caught:
        choose_resolution(interval, STORED)
    assert caught.value.status == 422
    assert caught.value.errors[0].field == "interval"
    assert reason in caught.value.errors[0].reason


def test_window_covers_whole_buckets() -> None:
    start, end = window(T0 + timedelta(minutes=7), T0 + timedelta(minutes=21), 600, 100)
    assert (start, end) == (T0, T0 + timedelta(minutes=30))
    assert window(T0, T0 + timedelta(minutes=20), 600, 100) == (T0, T0 + timedelta(minutes=20))


def test_window_refuses_an_inverted_range_and_too_many_buckets() -> None:
    with pytest.raises(ApiError, match="before to_time"):
        window(T0, T0, 600, 100)
    with pytest.raises(ApiError, match="at most 10"):
        window(T0, T0 + timedelta(hours=2), 600, 10)


def stored_bucket(start: datetime, values: list[float]) -> dict:
    r = Rollup()
    for i, v in enumerate(values):
        r.add(v, start + timedelta(seconds=i))
    return {"timestamp": start, **r.to_fields()}


@settings(database=None, deadline=None, max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6 * 60 - 1),
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_merged_buckets_equal_buckets_of_the_raw_values(points: list[tuple[int, float]]) -> None:
    # Readings over six hours, stored as 5m buckets, served at 10m and 1h.
    five: dict[datetime, list[float]] = {}
    for minute, value in points:
        five.setdefault(bucket_start(T0 + timedelta(minutes=minute), 300), []).append(value)
    docs = [stored_bucket(start, values) for start, values in five.items()]
    for width in (600, 3600):
        merged = merge_into_intervals(docs, width)
        expected: dict[datetime, list[float]] = {}
        for minute, value in points:
            expected.setdefault(bucket_start(T0 + timedelta(minutes=minute), width), []).append(
                value
            )
        assert merged.keys() == expected.keys()
        for start, values in expected.items():
            out = interval_bucket(start, width, merged[start])
            assert out["count"] == len(values)
            assert out["sum"] == math.fsum(values)
            assert (out["min"], out["max"]) == (min(values), max(values))
            assert out["avg"] == math.fsum(values) / len(values)


def test_interval_bucket_shape() -> None:
    # Percentiles take rank floor(q * (n - 1)): of two values, even p99 is the lower one.
    merged = merge_into_intervals([stored_bucket(T0, [1.0, 3.0])], 600)
    assert interval_bucket(T0, 600, merged[T0]) == {
        "start": "2025-01-15T10:00:00.000Z",
        "end": "2025-01-15T10:10:00.000Z",
        "count": 2,
        "sum": 4.0,
        "avg": 2.0,
        "min": 1.0,
        "max": 3.0,
        "stddev": 1.0,
        "p50": pytest.approx(1.0, rel=0.01),
        "p95": pytest.approx(1.0, rel=0.01),
        "p99": pytest.approx(1.0, rel=0.01),
    }
