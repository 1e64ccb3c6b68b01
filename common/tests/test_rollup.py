"""Unit tests for telemetry_common.domain.rollup: statistics of one bucket and merging two."""

from __future__ import annotations

import dataclasses
import math
import statistics
from datetime import UTC, datetime, timedelta

from hypothesis import example, given, settings
from hypothesis import strategies as st
from telemetry_common.domain.exact_sum import exact_partials, rounded
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import (
    bucket_id,
    merged_bucket,
    parse_bucket_id,
    row_id,
    served_fields,
    stored_fields,
)
from telemetry_common.domain.sketch import bin_key

T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
PROPS = settings(database=None, deadline=None, max_examples=200)


def rollup_of(values: list[float], times: list[datetime] | None = None) -> Rollup:
    r = Rollup()
    for i, v in enumerate(values):
        r.add(v, times[i] if times else T0 + timedelta(seconds=i))
    return r


def close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


def test_rollup_statistics() -> None:
    r = rollup_of([3.0, 1.0, 2.0, 6.0])
    assert (r.count, r.sum, r.min, r.max) == (4, 12.0, 1.0, 6.0)
    assert r.average == 3.0
    assert math.isclose(r.stddev, statistics.pstdev([3.0, 1.0, 2.0, 6.0]), rel_tol=1e-12)


def test_single_value_has_zero_stddev() -> None:
    r = rollup_of([42.5])
    assert (r.average, r.stddev, r.first, r.last) == (42.5, 0.0, 42.5, 42.5)


def test_empty_rollup_reports_zero() -> None:
    assert (Rollup().count, Rollup().average, Rollup().stddev) == (0, 0.0, 0.0)


def test_first_and_last_follow_reading_time_not_arrival() -> None:
    times = [T0 + timedelta(seconds=s) for s in (30, 10, 50, 20)]
    r = rollup_of([3.0, 1.0, 5.0, 2.0], times)
    assert (r.first, r.first_ts) == (1.0, times[1])
    assert (r.last, r.last_ts) == (5.0, times[2])


def test_merge_keeps_first_and_last_by_time() -> None:
    late = rollup_of([9.0], [T0 + timedelta(minutes=5)])
    early = rollup_of([1.0, 2.0], [T0, T0 + timedelta(minutes=1)])
    late.merge(early)
    assert (late.first, late.last, late.count) == (1.0, 9.0, 3)


def test_merging_an_empty_rollup_changes_nothing() -> None:
    r = rollup_of([1.0, 2.0])
    before = dataclasses.replace(r)
    r.merge(Rollup())
    assert r == before
    empty = Rollup()
    empty.merge(r)
    assert empty == r


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@PROPS
@given(st.data())
def test_merging_halves_equals_folding_all(data: st.DataObject) -> None:
    values = data.draw(st.lists(finite, min_size=1, max_size=60))
    seconds = data.draw(st.lists(st.integers(0, 59), min_size=len(values), max_size=len(values)))
    split = data.draw(st.integers(0, len(values)))
    times = [T0 + timedelta(seconds=s) for s in seconds]
    whole = rollup_of(values, times)
    left = rollup_of(values[:split], times[:split])
    left.merge(rollup_of(values[split:], times[split:]))
    scale = max(abs(v) for v in values)
    assert (left.count, left.min, left.max) == (whole.count, whole.min, whole.max)
    assert (left.first, left.first_ts) == (whole.first, whole.first_ts)
    assert (left.last, left.last_ts) == (whole.last, whole.last_ts)
    assert left.sum == whole.sum == math.fsum(values)
    assert left.sketch == whole.sketch
    assert close(left.mean, whole.mean, scale)
    assert close(left.stddev, whole.stddev, scale)


@PROPS
@given(
    st.lists(st.integers(-(10**6), 10**6).map(lambda i: i / 8), min_size=1, max_size=60),
    st.integers(0, 60),
)
def test_merging_halves_gives_an_exact_sum(values: list[float], split: int) -> None:
    # Eighths of integers add exactly, so sum must not depend on how the work was split.
    left = rollup_of(values[:split])
    left.merge(rollup_of(values[split:]))
    whole = rollup_of(values)
    assert (left.count, left.sum, left.min, left.max) == (
        whole.count,
        whole.sum,
        whole.min,
        whole.max,
    )
    assert left.sum == math.fsum(values)


@PROPS
@given(st.lists(finite, min_size=1, max_size=80))
def test_stddev_is_the_population_stddev(values: list[float]) -> None:
    r = rollup_of(values)
    scale = max(abs(v) for v in values)
    assert close(r.stddev, statistics.pstdev(values), scale)
    assert close(r.average, statistics.fmean(values), scale)


@PROPS
@given(st.permutations(list(range(12))))
def test_first_and_last_do_not_depend_on_arrival_order(order: list[int]) -> None:
    r = Rollup()
    for i in order:
        r.add(float(i * 10), T0 + timedelta(seconds=i))
    assert (r.first, r.first_ts) == (0.0, T0)
    assert (r.last, r.last_ts) == (110.0, T0 + timedelta(seconds=11))


@PROPS
@given(st.lists(finite, min_size=1, max_size=40), st.lists(finite, max_size=10))
def test_fields_round_trip(values: list[float], more: list[float]) -> None:
    r = rollup_of(values)
    back = Rollup.from_fields(r.to_fields())
    scale = max(abs(v) for v in values + more)
    assert (back.count, back.sum, back.min, back.max, back.m2) == (
        r.count,
        r.sum,
        r.min,
        r.max,
        r.m2,
    )
    assert (back.first, back.first_ts, back.last, back.last_ts) == (
        r.first,
        r.first_ts,
        r.last,
        r.last_ts,
    )
    assert back.average == r.average
    assert back.stddev == r.stddev
    assert close(back.mean, r.mean, scale)
    # A stored bucket must keep folding as if it had never left memory.
    for i, v in enumerate(more):
        ts = T0 + timedelta(minutes=1, seconds=i)
        r.add(v, ts)
        back.add(v, ts)
    assert back.count == r.count
    assert close(back.stddev, r.stddev, scale)


def test_fields_hold_what_the_dashboard_reads() -> None:
    fields = rollup_of([1.0, 3.0]).to_fields()
    assert fields["count"] == 2 and fields["average"] == 2.0 and fields["stddev"] == 1.0
    assert fields["first_ts"] == T0 and fields["last_ts"] == T0 + timedelta(seconds=1)


def test_empty_fields_round_trip_to_an_empty_rollup() -> None:
    assert Rollup.from_fields(Rollup().to_fields()) == Rollup()
    assert Rollup.from_fields({}) == Rollup()


# --- exact sums -------------------------------------------------------------------------


def test_sum_is_exact_where_plain_addition_drifts() -> None:
    values = [1e16, 1.0, -1e16, 1.0] * 3
    assert sum(values) != math.fsum(values)
    assert rollup_of(values).sum == math.fsum(values) == 6.0


@PROPS
@given(st.lists(finite, min_size=1, max_size=50), st.randoms(use_true_random=False))
def test_sum_does_not_depend_on_order_or_split(values: list[float], rnd) -> None:
    shuffled = values[:]
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(values))
    merged = rollup_of(shuffled[:cut])
    merged.merge(rollup_of(shuffled[cut:]))
    assert merged.sum == rollup_of(values).sum == math.fsum(values)


@PROPS
@given(st.lists(st.lists(finite, max_size=10), max_size=8))
def test_partials_merge_exactly(groups: list[list[float]]) -> None:
    partials = [0.0]
    for group in groups:
        partials = exact_partials(exact_partials(group), partials)
    assert rounded(partials) == math.fsum(v for g in groups for v in g)


# --- ties, percentiles, stored form -----------------------------------------------------


def test_first_and_last_ties_in_time_do_not_depend_on_order() -> None:
    for values in ([5.0, 1.0, 3.0], [3.0, 5.0, 1.0], [1.0, 3.0, 5.0]):
        r = rollup_of(values, [T0] * 3)
        assert (r.first, r.last) == (1.0, 5.0)


def test_fields_carry_percentiles_within_one_percent() -> None:
    values = [float(v) for v in range(1, 101)]
    fields = rollup_of(values).to_fields()
    for name, exact in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0)):
        assert abs(fields[name] - exact) <= 0.01 * exact, name


def test_stored_sketch_keeps_merging_after_a_round_trip() -> None:
    stored = Rollup.from_fields(rollup_of([1.0, 2.0, 3.0]).to_fields())
    stored.merge(rollup_of([4.0, 5.0]))
    assert stored.sketch == rollup_of([1.0, 2.0, 3.0, 4.0, 5.0]).sketch
    assert stored.sum == 15.0 and stored.count == 5


def test_bucket_written_before_exact_sums_still_loads() -> None:
    old = {"count": 2, "sum": 3.5, "min": 1.0, "max": 2.5, "m2": 1.125}
    r = Rollup.from_fields(old)
    assert (r.count, r.sum, r.mean, r.sketch.count) == (2, 3.5, 1.75, 0)


@PROPS
@given(
    # Subnormals, signed zeros and extremes (near the float limit the sketch's
    # own mapping overflows, on either path).
    st.floats(min_value=-1e300, max_value=1e300, allow_nan=False),
    st.datetimes(timezones=st.just(UTC)),
)
@example(-0.0, T0)
@example(5e-324, T0)
@example(-1e9, T0)
def test_single_value_fields_are_those_of_a_folded_rollup(value: float, ts: datetime) -> None:
    folded = Rollup()
    folded.add(value, ts)
    # repr tells -0.0 from 0.0, which == does not, and BSON keeps the sign.
    assert repr(Rollup.single_fields(value, ts, bin_key(value))) == repr(folded.to_fields())


@PROPS
@given(
    st.floats(min_value=-1e300, max_value=1e300, allow_nan=False),
    st.datetimes(timezones=st.just(UTC)),
)
@example(-0.0, T0)
@example(5e-324, T0)
def test_a_bucket_stored_as_its_one_value_serves_and_merges_as_the_full_fields(
    value: float, ts: datetime
) -> None:
    folded = Rollup()
    folded.add(value, ts)
    stored = stored_fields(folded)
    assert set(stored) == {"value", "ts"}
    assert repr(dict(served_fields(stored))) == repr(folded.to_fields())
    again = Rollup.from_fields(stored)
    again.add(1.5, ts)
    folded.add(1.5, ts)
    assert repr(again.to_fields()) == repr(folded.to_fields())
    # Two values or more are stored whole.
    assert stored_fields(folded) == folded.to_fields()


def test_a_merged_bucket_holds_what_its_parts_hold() -> None:
    start = datetime(2025, 1, 15, 10, 5, tzinfo=UTC)
    parts = []
    for minute, values in enumerate([[1.0, 5.0], [3.0], [-2.0]]):
        rollup = Rollup()
        for second, value in enumerate(values):
            rollup.add(value, start + timedelta(minutes=minute, seconds=second))
        parts.append(
            {
                "device_id": "d",
                "timestamp": start + timedelta(minutes=minute),
                "metrics": {"t": stored_fields(rollup)},
                "updated_at": start + timedelta(minutes=minute, seconds=30),
                "expire_at": start + timedelta(days=30, minutes=minute),
            }
        )
    merged = merged_bucket("default", "d", "5m", start, parts)
    assert merged["_id"] == bucket_id("default", "d", "5m", start)
    assert (merged["resolution"], merged["timestamp"]) == ("5m", start)
    assert merged["updated_at"] == parts[-1]["updated_at"]
    assert merged["expire_at"] == parts[-1]["expire_at"]
    every = Rollup.from_fields(merged["metrics"]["t"])
    assert (every.count, every.sum, every.min, every.max) == (4, 7.0, -2.0, 5.0)
    assert (every.first, every.last) == (1.0, -2.0)
    # One part is served as it is stored.
    assert merged_bucket("default", "d", "5m", start, parts[1:2])["metrics"] == parts[1]["metrics"]


def test_a_bucket_id_and_its_row_ids_parse_back_into_their_parts() -> None:
    start = datetime(2025, 1, 15, 10, 5, tzinfo=UTC)
    doc_id = bucket_id("default", "dev-1", "1m", start)
    assert tuple(parse_bucket_id(doc_id)) == ("default", "dev-1", "1m", start)
    assert parse_bucket_id(row_id(doc_id, "temperature_c")) == parse_bucket_id(doc_id)
