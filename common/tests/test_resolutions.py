"""Unit tests for telemetry_common.domain.resolutions: bucket widths and their refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.domain.resolutions import (
    DEFAULT_PLAN,
    DEFAULT_RESOLUTIONS,
    DEFAULT_ROLLUP_RETENTION,
    RollupPlan,
    bucket_start,
    parse_resolutions,
    parse_retention,
    resolution_seconds,
    serving_resolution,
)

DAY = 86_400


@pytest.mark.parametrize(
    ("resolution", "seconds"),
    [
        ("1s", 1),
        ("30s", 30),
        ("90s", 90),
        ("1m", 60),
        ("5m", 300),
        ("15m", 900),
        ("1h", 3600),
        ("6h", 21_600),
        ("24h", DAY),
        ("1d", DAY),
        ("2d", 2 * DAY),
    ],
)
def test_resolution_width_in_seconds(resolution: str, seconds: int) -> None:
    assert resolution_seconds(resolution) == seconds


@pytest.mark.parametrize(
    ("resolution", "reason"),
    [
        ("7m", "does not divide a day"),
        ("7s", "does not divide a day"),
        ("25h", "does not divide a day"),
        ("0m", "is not like"),
        ("0s", "is not like"),
        ("abc", "is not like"),
        ("", "is not like"),
        ("m", "is not like"),
        ("1", "is not like"),
        ("1w", "is not like"),
        ("1M", "is not like"),
        ("-1m", "is not like"),
        ("1.5h", "is not like"),
        (" 1m", "is not like"),
        ("1m1h", "is not like"),
    ],
)
def test_bad_resolution_is_refused(resolution: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        resolution_seconds(resolution)


@settings(database=None, deadline=None)
@given(st.integers(min_value=1, max_value=2 * DAY))
def test_second_widths_are_accepted_exactly_when_they_line_up_with_days(n: int) -> None:
    lines_up = DAY % n == 0 or n % DAY == 0
    if lines_up:
        assert resolution_seconds(f"{n}s") == n
    else:
        with pytest.raises(ValueError, match="does not divide a day"):
            resolution_seconds(f"{n}s")


def test_parse_resolutions_keeps_the_given_order() -> None:
    parsed = parse_resolutions("1h,1m,1d")
    assert parsed == {"1h": 3600, "1m": 60, "1d": DAY}
    assert list(parsed) == ["1h", "1m", "1d"]


def test_parse_resolutions_ignores_spaces_and_empty_parts() -> None:
    assert parse_resolutions(" 1m , 5m ,, ") == {"1m": 60, "5m": 300}


@pytest.mark.parametrize("spec", ["", " ", ",", " , ,"])
def test_parse_resolutions_needs_at_least_one(spec: str) -> None:
    with pytest.raises(ValueError, match="at least one resolution"):
        parse_resolutions(spec)


@pytest.mark.parametrize("spec", ["1m,7m", "abc", "1m,0h"])
def test_parse_resolutions_refuses_any_bad_entry(spec: str) -> None:
    with pytest.raises(ValueError, match="resolution"):
        parse_resolutions(spec)


def test_default_resolutions_are_one_minute_to_one_day() -> None:
    assert parse_resolutions(DEFAULT_RESOLUTIONS) == {
        "1m": 60,
        "5m": 300,
        "15m": 900,
        "1h": 3600,
        "1d": DAY,
    }


def test_two_names_for_one_width_are_refused() -> None:
    with pytest.raises(ValueError, match="same width"):
        parse_resolutions("1d,24h")


# --- retention --------------------------------------------------------------------------


def test_default_retention() -> None:
    kept = parse_retention(DEFAULT_ROLLUP_RETENTION, parse_resolutions(DEFAULT_RESOLUTIONS))
    assert kept == {
        "1m": timedelta(days=7),
        "5m": timedelta(days=30),
        "15m": timedelta(days=30),
        "1h": timedelta(days=365),
        "1d": None,
    }


def test_a_resolution_without_retention_is_kept_forever() -> None:
    assert parse_retention("1m=36h", {"1m": 60, "1h": 3600}) == {
        "1m": timedelta(hours=36),
        "1h": None,
    }


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("5m=7d", "not one of the resolutions"),
        ("1m", "is not like 1m=7d"),
        ("1m=7", "is not like 30s"),
        ("1m=0d", "is not like 30s"),
        ("1m=always", "is not like 30s"),
    ],
)
def test_bad_retention_is_refused(spec: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_retention(spec, {"1m": 60, "1h": 3600})


# --- serving an interval ----------------------------------------------------------------

STORED = parse_resolutions(DEFAULT_RESOLUTIONS)


@pytest.mark.parametrize(
    ("interval", "served_by"),
    [
        ("1m", "1m"),
        ("2m", "1m"),
        ("5m", "5m"),
        ("10m", "5m"),
        ("30m", "15m"),
        ("1h", "1h"),
        ("2h", "1h"),
        ("6h", "1h"),
        ("1d", "1d"),
        ("2d", "1d"),
    ],
)
def test_interval_is_served_by_the_coarsest_resolution_that_tiles_it(
    interval: str, served_by: str
) -> None:
    assert serving_resolution(resolution_seconds(interval), STORED) == served_by


@pytest.mark.parametrize("interval", ["30s", "90s", "1s"])
def test_interval_finer_than_or_across_the_stored_ones_is_not_served(interval: str) -> None:
    assert serving_resolution(resolution_seconds(interval), STORED) is None


def test_without_fine_resolutions_only_their_multiples_are_served() -> None:
    assert serving_resolution(600, {"1h": 3600}) is None
    assert serving_resolution(7200, {"1h": 3600}) == "1h"


@settings(database=None, deadline=None)
@given(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from([60, 300, 900, 3600, DAY]),
)
def test_buckets_nest_inside_coarser_ones(ts: datetime, width: int) -> None:
    ts = ts.replace(tzinfo=UTC)
    start = bucket_start(ts, width)
    for coarser in (w for w in (60, 300, 900, 3600, DAY) if w >= width and w % width == 0):
        assert bucket_start(start, coarser) == bucket_start(ts, coarser)


def test_by_default_5m_and_15m_are_merged_from_1m_and_the_rest_stored() -> None:
    assert list(DEFAULT_PLAN.stored) == ["1m", "1h", "1d"]
    assert DEFAULT_PLAN.derived == {"5m": "1m", "15m": "1m"}
    assert DEFAULT_PLAN.derived_from("1m") == {"5m": 300, "15m": 900}
    assert DEFAULT_PLAN.derived_from("1h") == {}


@pytest.mark.parametrize(
    ("served", "materialized", "stored", "derived"),
    [
        # A served resolution no stored one divides is stored all the same.
        ("30s,5m,1h", "1m,1h,1d", ["30s", "1h"], {"5m": "30s"}),
        ("5m,1h", "1m,1h,1d", ["5m", "1h"], {}),
        # Merged from the coarsest stored resolution that divides it.
        ("1m,5m,10m,1h", "1m,5m,1h", ["1m", "5m", "1h"], {"10m": "5m"}),
        ("1m,1h,1d", "1m", ["1m"], {"1h": "1m", "1d": "1m"}),
    ],
)
def test_a_plan_stores_what_it_must_and_merges_the_rest(
    served: str, materialized: str, stored: list[str], derived: dict[str, str]
) -> None:
    plan = RollupPlan.of(parse_resolutions(served), parse_resolutions(materialized))
    assert list(plan.stored) == stored
    assert plan.derived == derived


def test_a_stored_resolution_is_kept_as_long_as_what_is_merged_from_it() -> None:
    retention = parse_retention(DEFAULT_ROLLUP_RETENTION, DEFAULT_PLAN.served)
    assert DEFAULT_PLAN.stored_retention(retention) == {
        "1m": timedelta(days=30),
        "1h": timedelta(days=365),
        "1d": None,
    }
    forever = RollupPlan.of(parse_resolutions("1m,1h"), parse_resolutions("1m"))
    assert forever.stored_retention({"1m": timedelta(days=7), "1h": None}) == {"1m": None}
