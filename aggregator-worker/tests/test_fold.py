"""Unit tests for aggregator_worker.fold: buckets, rollup arithmetic, replay-safe application."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aggregator_worker.fold import (
    BucketKey,
    Contribution,
    Placed,
    apply_new,
    fold_batch,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.reading import Reading, parse_reading
from telemetry_common.resolutions import bucket_start
from telemetry_common.rollup import Rollup
from telemetry_common.sketch import bin_key
from telemetry_common.timefmt import to_utc_ms
from telemetry_common.versioned import Watermarks

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)
T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
RESOLUTIONS = {"1m": 60, "1h": 3600, "1d": 86_400}
PROPS = settings(database=None, deadline=None, max_examples=200)


def reading(**body: Any) -> Reading:
    return parse_reading({"device_id": "dev-1", **body}, now=NOW, max_future_skew=timedelta(days=1))


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


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


# --- fold_batch -----------------------------------------------------------------------


def test_two_readings_in_one_minute_share_a_bucket() -> None:
    a = reading(ts="2025-01-15T10:00:05Z", temperature_c=20.0)
    b = reading(ts="2025-01-15T10:00:40Z", temperature_c=22.0)
    buckets = fold_batch([Placed(0, 7, a), Placed(1, 3, b)], {"1m": 60})
    assert list(buckets) == [BucketKey("dev-1", "temperature_c", "1m", T0)]
    assert buckets[BucketKey("dev-1", "temperature_c", "1m", T0)] == [
        Contribution(0, 7, a.ts, 20.0, bin_key(20.0)),
        Contribution(1, 3, b.ts, 22.0, bin_key(22.0)),
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
        Contribution(0, 1, late.ts, 18.0, bin_key(18.0))
    ]
    assert BucketKey("dev-1", "temperature_c", "1h", old.replace(minute=0)) in buckets
    assert BucketKey("dev-1", "temperature_c", "1d", old.replace(hour=0, minute=0)) in buckets


# --- Watermarks and apply_new ---------------------------------------------------------


def contribs(partition: int, offsets: range, value: float = 1.0) -> list[Contribution]:
    return [
        Contribution(partition, o, T0 + timedelta(seconds=o), value + o, bin_key(value + o))
        for o in offsets
    ]


def test_watermarks_are_per_partition_and_never_go_back() -> None:
    w = Watermarks({"0": 5})
    assert not w.is_new(0, 5) and not w.is_new(0, 4) and w.is_new(0, 6)
    assert w.is_new(1, 0)
    w.advance(0, 3)
    w.advance(2, 9)
    assert w.by_partition == {"0": 5, "2": 9}


def test_apply_new_folds_everything_into_a_fresh_bucket() -> None:
    r, w = Rollup(), Watermarks()
    assert len(apply_new(r, w, contribs(0, range(3)))) == 3
    assert (r.count, r.sum) == (3, 1.0 + 2.0 + 3.0)
    assert w.by_partition == {"0": 2}


def test_replay_changes_nothing() -> None:
    batch = contribs(0, range(3)) + contribs(1, range(10, 12))
    r, w = Rollup(), Watermarks()
    assert len(apply_new(r, w, batch)) == 5
    before, marks = dataclasses.replace(r), dict(w.by_partition)
    assert len(apply_new(r, w, batch)) == 0
    assert r == before
    assert w.by_partition == marks


def test_partial_overlap_applies_only_the_new_contributions() -> None:
    r, w = Rollup(), Watermarks()
    apply_new(r, w, contribs(0, range(3)))
    assert len(apply_new(r, w, contribs(0, range(1, 5)))) == 2
    assert r.count == 5
    assert r.sum == sum(1.0 + o for o in range(5))
    assert w.by_partition == {"0": 4}


def test_a_high_watermark_on_one_partition_does_not_skip_another() -> None:
    r, w = Rollup(), Watermarks({"0": 100})
    assert len(apply_new(r, w, contribs(0, range(98, 100)) + contribs(1, range(3)))) == 3
    assert r.count == 3
    assert w.by_partition == {"0": 100, "1": 2}


def test_replay_through_stored_fields_changes_nothing() -> None:
    batch = contribs(3, range(4))
    r, w = Rollup(), Watermarks()
    apply_new(r, w, batch)
    stored, applied = r.to_fields(), dict(w.by_partition)
    again = Rollup.from_fields(stored)
    assert len(apply_new(again, Watermarks(applied), batch)) == 0
    assert again.to_fields() == stored


def test_apply_new_accepts_a_one_shot_iterable() -> None:
    # The signature takes any Iterable; a generator must still advance the watermarks,
    # or a replay of the same records would be counted again.
    r, w = Rollup(), Watermarks()
    assert len(apply_new(r, w, iter(contribs(0, range(3))))) == 3
    assert w.by_partition == {"0": 2}
    assert len(apply_new(r, w, iter(contribs(0, range(3))))) == 0
    assert r.count == 3


# --- any batching, order and replay gives the buckets of one pass ---------------------


def _fold_into(
    store: dict[str, tuple[Rollup, Watermarks]],
    batch: list[Placed],
    written: Callable[[BucketKey], bool] = lambda _: True,
) -> None:
    """What write_rollups does against MongoDB, against a dict; only ``written`` buckets."""
    for key, contributions in fold_batch(batch, RESOLUTIONS).items():
        if not written(key):
            continue
        rollup, marks = store.get(key.doc_id) or (Rollup(), Watermarks())
        apply_new(rollup, marks, contributions)
        store[key.doc_id] = (rollup, marks)


def _one_pass(readings: list[Reading]) -> dict[str, Rollup]:
    buckets: dict[str, Rollup] = {}
    for r in readings:
        for resolution, width in RESOLUTIONS.items():
            for metric, value in r.metrics.items():
                key = BucketKey(r.device_id, metric, resolution, bucket_start(r.ts, width))
                buckets.setdefault(key.doc_id, Rollup()).add(value, r.ts)
    return buckets


reading_strategy = st.builds(
    lambda device, seconds, values: reading(
        device_id=f"dev-{device}",
        ts=(T0 - timedelta(days=3) + timedelta(seconds=seconds)).isoformat(),
        metrics=values,
    ),
    st.integers(0, 2),
    # Days of backfill and seconds apart: late readings and shared buckets alike.
    st.integers(0, 4 * 86_400).map(lambda s: s - s % 7),
    st.dictionaries(st.sampled_from(["temp", "cpu", "rpm"]), finite, min_size=1, max_size=3),
)


@PROPS
@given(st.lists(reading_strategy, min_size=1, max_size=40), st.data())
def test_any_batching_interleaving_and_replay_gives_the_buckets_of_one_pass(
    readings: list[Reading], data: st.DataObject
) -> None:
    partitions = 3
    # Kafka keeps each partition's order; readings within it may be in any time order.
    logs: list[list[Placed]] = [[] for _ in range(partitions)]
    for r in readings:
        p = data.draw(st.integers(0, partitions - 1))
        logs[p].append(Placed(p, len(logs[p]), r))
    committed = [0] * partitions
    store: dict[str, tuple[Rollup, Watermarks]] = {}
    while any(committed[p] < len(logs[p]) for p in range(partitions)):
        batch: list[Placed] = []
        fetched = {}
        for p in range(partitions):
            size = data.draw(st.integers(1, 6))
            fetched[p] = logs[p][committed[p] : committed[p] + size]
            batch.extend(fetched[p])
        batch = data.draw(st.permutations(batch)) if len(batch) < 8 else batch
        # A crash after the unordered bulk write reached some buckets, before the
        # commit: the next round fetches the same records again.
        if data.draw(st.booleans()):
            _fold_into(store, batch, lambda _: data.draw(st.booleans()))
            continue
        _fold_into(store, sorted(batch, key=lambda pl: (pl.partition, pl.offset)))
        for p, records in fetched.items():
            committed[p] += len(records)
    expected = _one_pass(readings)
    assert store.keys() == expected.keys()
    for doc_id, want in expected.items():
        got = store[doc_id][0]
        assert (got.count, got.sum, got.min, got.max) == (want.count, want.sum, want.min, want.max)
        assert got.sum == math.fsum(got_values(readings, doc_id))
        assert (got.first, got.first_ts, got.last, got.last_ts) == (
            want.first,
            want.first_ts,
            want.last,
            want.last_ts,
        )
        assert got.sketch == want.sketch
        assert close(got.stddev, want.stddev, max(abs(got.min), abs(got.max)))


def got_values(readings: list[Reading], doc_id: str) -> list[float]:
    device, metric, resolution, start = doc_id.split("|")
    width = RESOLUTIONS[resolution]
    return [
        r.metrics[metric]
        for r in readings
        if r.device_id == device
        and metric in r.metrics
        and int(bucket_start(r.ts, width).timestamp()) == int(start)
    ]
