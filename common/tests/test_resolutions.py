"""Unit tests for telemetry_common.resolutions: bucket widths and their refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.resolutions import parse_resolutions, resolution_seconds

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
