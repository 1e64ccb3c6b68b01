"""Unit tests for aggregator_worker.fold: buckets, rollup arithmetic, replay-safe application."""

from __future__ import annotations

import dataclasses
import math
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aggregator_worker.fold import (
    BucketKey,
    Contribution,
    Placed,
    Rollup,
    Watermarks,
    apply_new,
    bucket_start,
    fold_batch,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.reading import Reading, parse_reading
from telemetry_common.timefmt import to_utc_ms

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)
T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
RESOLUTIONS = {"1m": 60, "1h": 3600, "1d": 86_400}
PROPS = settings(database=None, deadline=None, max_examples=200)


def reading(**body: Any) -> Reading:
    return parse_reading({"device_id": "dev-1", **body}, now=NOW, max_future_skew=timedelta(days=1))


def rollup_of(values: list[float], times: list[datetime] | None = None) -> Rollup:
    r = Rollup()
    for i, v in enumerate(values):
        r.add(v, times[i] if times else T0 + timedelta(seconds=i))
    return r


def close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, scale))


# --- bucket_start and BucketKey -------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "width", "start"),
    [
        ("2025-01-15T10:00:00Z", 60, "2025-01-15T10:00:00Z"),
        ("2025-01-15T10:00:59.999Z", 60, "2025-01-15T10:00:00Z"),
        ("2025-01-15T10:01:00Z", 60, "2025-01-15T10:01:00Z"),
        ("2025-01-15T10:07:30Z", 300, "2025-01-15T10:05:00Z"),
        ("2025-01-15T10:59:59Z", 3600, "2025-01-15T10:00:00Z"),
        ("2025-01-15T23:59:59.999Z", 86_400, "2025-01-15T00:00:00Z"),
        ("1970-01-01T00:00:00Z", 60, "1970-01-01T00:00:00Z"),
    ],
)
def test_bucket_start(ts: str, width: int, start: str) -> None:
    assert bucket_start(datetime.fromisoformat(ts), width) == datetime.fromisoformat(start)


@PROPS
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    ),
    st.sampled_from([1, 30, 60, 300, 900, 3600, 21_600, 86_400]),
)
def test_bucket_contains_the_timestamp_and_is_epoch_aligned(ts: datetime, width: int) -> None:
    ts = to_utc_ms(ts)
    start = bucket_start(ts, width)
    assert start <= ts < start + timedelta(seconds=width)
    assert (start - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() % width == 0


def test_doc_id_is_device_metric_resolution_and_epoch_seconds() -> None:
    key = BucketKey("dev-1", "temp", "1m", T0)
    assert key.doc_id == "dev-1|temp|1m|1736935200"


def test_doc_ids_differ_for_every_key_part() -> None:
    keys = [
        BucketKey("dev-1", "temp", "1m", T0),
        BucketKey("dev-2", "temp", "1m", T0),
        BucketKey("dev-1", "cpu", "1m", T0),
        BucketKey("dev-1", "temp", "1h", T0),
        BucketKey("dev-1", "temp", "1m", T0 + timedelta(minutes=1)),
    ]
    assert len({k.doc_id for k in keys}) == len(keys)


# --- Rollup ---------------------------------------------------------------------------


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
    assert close(left.sum, whole.sum, scale * len(values))
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


# --- fold_batch -----------------------------------------------------------------------


def test_two_readings_in_one_minute_share_a_bucket() -> None:
    a = reading(ts="2025-01-15T10:00:05Z", temperature_c=20.0)
    b = reading(ts="2025-01-15T10:00:40Z", temperature_c=22.0)
    buckets = fold_batch([Placed(0, 7, a), Placed(1, 3, b)], {"1m": 60})
    assert list(buckets) == [BucketKey("dev-1", "temperature_c", "1m", T0)]
    assert buckets[BucketKey("dev-1", "temperature_c", "1m", T0)] == [
        Contribution(0, 7, a.ts, 20.0),
        Contribution(1, 3, b.ts, 22.0),
    ]


def test_each_metric_and_resolution_gets_its_own_bucket() -> None:
    r = reading(ts="2025-01-15T10:30:15Z", temperature_c=25.5, humidity=60.0)
    buckets = fold_batch([Placed(0, 0, r)], RESOLUTIONS)
    day = datetime(2025, 1, 15, tzinfo=UTC)
    assert set(buckets) == {
        BucketKey("dev-1", metric, res, start)
        for metric in ("temperature_c", "humidity")
        for res, start in (("1m", T0 + timedelta(minutes=30)), ("1h", T0), ("1d", day))
    }
    assert all(len(c) == 1 for c in buckets.values())
    assert buckets[BucketKey("dev-1", "humidity", "1h", T0)][0].value == 60.0


def test_readings_of_different_devices_or_minutes_stay_apart() -> None:
    batch = [
        Placed(0, 0, reading(ts="2025-01-15T10:00:59.999Z", temp=1.0)),
        Placed(0, 1, reading(ts="2025-01-15T10:01:00Z", temp=2.0)),
        Placed(0, 2, reading(device_id="dev-2", ts="2025-01-15T10:00:10Z", temp=3.0)),
    ]
    assert len(fold_batch(batch, {"1m": 60})) == 3


def test_late_reading_lands_in_its_own_timestamps_bucket() -> None:
    late = reading(ts="2025-01-10T03:17:42Z", temperature_c=18.0)
    fresh = reading(ts="2025-01-15T11:59:00Z", temperature_c=21.0)
    buckets = fold_batch([Placed(0, 0, fresh), Placed(0, 1, late)], RESOLUTIONS)
    old = datetime(2025, 1, 10, 3, 17, tzinfo=UTC)
    assert buckets[BucketKey("dev-1", "temperature_c", "1m", old)] == [
        Contribution(0, 1, late.ts, 18.0)
    ]
    assert BucketKey("dev-1", "temperature_c", "1h", old.replace(minute=0)) in buckets
    assert BucketKey("dev-1", "temperature_c", "1d", old.replace(hour=0, minute=0)) in buckets


# --- Watermarks and apply_new ---------------------------------------------------------


def contribs(partition: int, offsets: range, value: float = 1.0) -> list[Contribution]:
    return [Contribution(partition, o, T0 + timedelta(seconds=o), value + o) for o in offsets]


def test_watermarks_are_per_partition_and_never_go_back() -> None:
    w = Watermarks({"0": 5})
    assert not w.is_new(0, 5) and not w.is_new(0, 4) and w.is_new(0, 6)
    assert w.is_new(1, 0)
    w.advance(0, 3)
    w.advance(2, 9)
    assert w.by_partition == {"0": 5, "2": 9}


def test_apply_new_folds_everything_into_a_fresh_bucket() -> None:
    r, w = Rollup(), Watermarks()
    assert apply_new(r, w, contribs(0, range(3))) == 3
    assert (r.count, r.sum) == (3, 1.0 + 2.0 + 3.0)
    assert w.by_partition == {"0": 2}


def test_replay_changes_nothing() -> None:
    batch = contribs(0, range(3)) + contribs(1, range(10, 12))
    r, w = Rollup(), Watermarks()
    assert apply_new(r, w, batch) == 5
    before, marks = dataclasses.replace(r), dict(w.by_partition)
    assert apply_new(r, w, batch) == 0
    assert r == before
    assert w.by_partition == marks


def test_partial_overlap_applies_only_the_new_contributions() -> None:
    r, w = Rollup(), Watermarks()
    apply_new(r, w, contribs(0, range(3)))
    assert apply_new(r, w, contribs(0, range(1, 5))) == 2
    assert r.count == 5
    assert r.sum == sum(1.0 + o for o in range(5))
    assert w.by_partition == {"0": 4}


def test_a_high_watermark_on_one_partition_does_not_skip_another() -> None:
    r, w = Rollup(), Watermarks({"0": 100})
    assert apply_new(r, w, contribs(0, range(98, 100)) + contribs(1, range(3))) == 3
    assert r.count == 3
    assert w.by_partition == {"0": 100, "1": 2}


def test_replay_through_stored_fields_changes_nothing() -> None:
    batch = contribs(3, range(4))
    r, w = Rollup(), Watermarks()
    apply_new(r, w, batch)
    stored, applied = r.to_fields(), dict(w.by_partition)
    again = Rollup.from_fields(stored)
    assert apply_new(again, Watermarks(applied), batch) == 0
    assert again.to_fields() == stored


def test_apply_new_accepts_a_one_shot_iterable() -> None:
    # The signature takes any Iterable; a generator must still advance the watermarks,
    # or a replay of the same records would be counted again.
    r, w = Rollup(), Watermarks()
    assert apply_new(r, w, iter(contribs(0, range(3)))) == 3
    assert w.by_partition == {"0": 2}
    assert apply_new(r, w, iter(contribs(0, range(3)))) == 0
    assert r.count == 3
