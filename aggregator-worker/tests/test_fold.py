"""Unit tests for aggregator_worker.fold: buckets, held state, replay-safe folding and merging."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aggregator_worker.fold import (
    BucketKey,
    BucketStarts,
    BucketState,
    Contribution,
    DeviceState,
    PositionedReading,
    contributions,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.domain.reading import Reading, parse_reading
from telemetry_common.domain.resolutions import bucket_start
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import metric_rows, parse_bucket_id
from telemetry_common.domain.sketch import bin_key
from telemetry_common.domain.timefmt import to_utc_ms
from telemetry_common.infra.versioned import Watermarks

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


def test_doc_id_is_project_device_resolution_and_padded_epoch_seconds() -> None:
    key = BucketKey("default", "dev-1", "1m", T0)
    assert key.doc_id == "default|dev-1|1m|01736935200"


def test_doc_ids_differ_for_every_key_part_and_sort_in_time_order() -> None:
    keys = [
        BucketKey("default", "dev-1", "1m", T0),
        BucketKey("default", "dev-2", "1m", T0),
        BucketKey("default", "dev-1", "1h", T0),
        BucketKey("default", "dev-1", "1m", T0 + timedelta(minutes=1)),
    ]
    assert len({k.doc_id for k in keys}) == len(keys)
    early = BucketKey("default", "dev-1", "1m", datetime(2001, 9, 9, 1, 46, 39, tzinfo=UTC))
    late = BucketKey("default", "dev-1", "1m", datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC))
    assert early.doc_id < late.doc_id  # 999,999,999 and 1,000,000,000 seconds


# --- folding readings into buckets ----------------------------------------------------


def fold_all(
    batch: list[PositionedReading], resolutions: dict[str, int]
) -> dict[BucketKey, BucketState]:
    starts, held = BucketStarts(resolutions), {}
    for placed in batch:
        values = contributions(placed)
        for resolution, start in starts.of(placed.reading.ts):
            key = BucketKey("default", placed.reading.device_id, resolution, start)
            state = held.setdefault(key, BucketState(key, placed.partition))
            state.fold(placed.partition, placed.offset, values)
    return held


def test_two_readings_in_one_minute_share_a_bucket() -> None:
    a = reading(ts="2025-01-15T10:00:05Z", temperature_c=20.0)
    b = reading(ts="2025-01-15T10:00:40Z", temperature_c=22.0)
    held = fold_all([PositionedReading(0, 7, a), PositionedReading(1, 3, b)], {"1m": 60})
    [state] = held.values()
    assert state.key == BucketKey("default", "dev-1", "1m", T0)
    assert state.pending == [
        (0, 7, [("temperature_c", Contribution(0, 7, a.ts, 20.0, bin_key(20.0)))]),
        (1, 3, [("temperature_c", Contribution(1, 3, b.ts, 22.0, bin_key(22.0)))]),
    ]
    assert state.rollup("temperature_c").count == 2


def test_every_metric_of_a_reading_shares_each_resolutions_bucket() -> None:
    r = reading(ts="2025-01-15T10:30:15Z", temperature_c=25.5, humidity=60.0)
    held = fold_all([PositionedReading(0, 0, r)], RESOLUTIONS)
    day = datetime(2025, 1, 15, tzinfo=UTC)
    assert set(held) == {
        BucketKey("default", "dev-1", res, start)
        for res, start in (("1m", T0 + timedelta(minutes=30)), ("1h", T0), ("1d", day))
    }
    for state in held.values():
        assert set(state.metrics) == {"temperature_c", "humidity"}
    assert held[BucketKey("default", "dev-1", "1h", T0)].rollup("humidity").max == 60.0


def test_readings_of_different_devices_or_minutes_stay_apart() -> None:
    batch = [
        PositionedReading(0, 0, reading(ts="2025-01-15T10:00:59.999Z", temp=1.0)),
        PositionedReading(0, 1, reading(ts="2025-01-15T10:01:00Z", temp=2.0)),
        PositionedReading(0, 2, reading(device_id="dev-2", ts="2025-01-15T10:00:10Z", temp=3.0)),
    ]
    assert len(fold_all(batch, {"1m": 60})) == 3


def test_late_reading_lands_in_its_own_timestamps_bucket() -> None:
    late = reading(ts="2025-01-10T03:17:42Z", temperature_c=18.0)
    fresh = reading(ts="2025-01-15T11:59:00Z", temperature_c=21.0)
    held = fold_all([PositionedReading(0, 0, fresh), PositionedReading(0, 1, late)], RESOLUTIONS)
    old = datetime(2025, 1, 10, 3, 17, tzinfo=UTC)
    assert held[BucketKey("default", "dev-1", "1m", old)].rollup("temperature_c").sum == 18.0
    assert BucketKey("default", "dev-1", "1h", old.replace(minute=0)) in held
    assert BucketKey("default", "dev-1", "1d", old.replace(hour=0, minute=0)) in held


# --- watermarks: replays fold nothing -------------------------------------------------


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


def bucket(contributions_: list[Contribution], metric: str = "temp") -> BucketState:
    state = BucketState(BucketKey("default", "dev-1", "1m", T0), 0)
    for c in contributions_:
        state.fold(c.partition, c.offset, [(metric, c)])
    return state


def test_a_replayed_reading_folds_nothing() -> None:
    state = bucket(contribs(0, range(3)))
    assert not any(state.fold(c.partition, c.offset, [("temp", c)]) for c in contribs(0, range(3)))
    assert (state.rollup("temp").count, state.rollup("temp").sum) == (3, 1.0 + 2.0 + 3.0)
    assert state.applied == {0: 2}


def test_a_high_watermark_on_one_partition_does_not_skip_another() -> None:
    state = BucketState(BucketKey("default", "dev-1", "1m", T0), 0, applied={0: 100})
    batch = contribs(0, range(98, 100)) + contribs(1, range(3))
    folded = [state.fold(c.partition, c.offset, [("temp", c)]) for c in batch]
    assert folded == [False, False, True, True, True]
    assert state.applied == {0: 100, 1: 2}


def test_merging_with_the_stored_bucket_folds_only_what_it_lacks() -> None:
    # Stored by the partition's previous owner up to offset 4; this worker folded
    # 3..7 from the last commit before it knew the bucket was stored.
    stored = bucket(contribs(0, range(5))).document(1, NOW, None)
    mine = bucket(contribs(0, range(3, 8)))
    merged = mine.merge_stored(stored)
    assert merged.held == [(0, 3), (0, 4)] and merged.added == [(0, 5), (0, 6), (0, 7)]
    assert mine.stored and mine.dirty and mine.pending == []
    assert mine.rollup("temp").count == 8
    assert mine.rollup("temp").sum == sum(1.0 + o for o in range(8))


def test_merging_a_bucket_that_held_everything_leaves_nothing_to_write() -> None:
    stored = bucket(contribs(0, range(5))).document(1, NOW, None)
    mine = bucket(contribs(0, range(2, 5)))
    assert len(mine.merge_stored(stored).held) == 3
    assert not mine.dirty


def test_a_metric_with_its_own_watermark_is_honoured_over_the_buckets() -> None:
    # A migrated bucket whose humidity lagged its temperature at a crash: the
    # migration wrote humidity's own watermark beside the bucket's.
    stored = bucket(contribs(0, range(5)), "temp").document(1, NOW, None)
    humidity = bucket(contribs(0, range(3)), "humidity").document(1, NOW, None)
    stored["metrics"]["humidity"] = {**humidity["metrics"]["humidity"], "_applied": {"0": 2}}
    replay = BucketState(BucketKey("default", "dev-1", "1m", T0), 0)
    for c in contribs(0, range(6)):
        replay.fold(0, c.offset, [("temp", c), ("humidity", c)])
    merged = replay.merge_stored(stored)
    assert merged.held == [(0, 0), (0, 1), (0, 2)]
    assert replay.rollup("temp").count == 6
    assert replay.rollup("humidity").count == 6
    # Both reached offset 5: one watermark serves them again.
    doc = replay.document(2, NOW, None)
    assert doc["_applied"] == {"0": 5} and "_applied" not in doc["metrics"]["humidity"]


def test_a_lagging_metric_keeps_its_watermark_until_it_catches_up() -> None:
    # Humidity holds offsets 0..4, temperature only 0..2.
    stored = bucket(contribs(0, range(5)), "humidity").document(1, NOW, None)
    temp = bucket(contribs(0, range(3)), "temp").document(1, NOW, None)
    stored["metrics"]["temp"] = {**temp["metrics"]["temp"], "_applied": {"0": 2}}
    replay = BucketState(BucketKey("default", "dev-1", "1m", T0), 0)
    replay.fold(0, 3, [("temp", contribs(0, range(3, 4))[0])])
    replay.merge_stored(stored)
    assert replay.rollup("temp").count == 4 and replay.rollup("humidity").count == 5
    doc = replay.document(2, NOW, None)
    assert doc["metrics"]["temp"]["_applied"] == {"0": 3} and doc["_applied"] == {"0": 4}


def test_the_document_holds_every_metric_and_the_writers_epoch() -> None:
    r = reading(ts="2025-01-15T10:00:05Z", temperature_c=20.0, humidity=55.0)
    [state] = fold_all([PositionedReading(2, 9, r)], {"1m": 60}).values()
    doc = state.document(7, NOW, timedelta(days=7))
    assert doc["_id"] == "default|dev-1|1m|01736935200"
    assert (doc["project_id"], doc["device_id"], doc["resolution"]) == ("default", "dev-1", "1m")
    assert doc["timestamp"] == T0 and doc["_e"] == 7 and doc["_applied"] == {"2": 9}
    assert doc["expire_at"] == NOW + timedelta(days=7)
    rows = {row["sensor_type"]: row for row in metric_rows(doc)}
    assert rows["humidity"]["average"] == 55.0
    assert rows["temperature_c"]["p50"] == pytest.approx(20.0, rel=0.01)


def test_a_device_summary_folds_each_reading_once() -> None:
    device = DeviceState("dev-1", 0)
    a = PositionedReading(0, 1, reading(ts="2025-01-15T10:00:05Z", temp=1.0, tags=["room:1"]))
    b = PositionedReading(0, 2, reading(ts="2025-01-15T09:00:00Z", temp=2.0))
    assert device.fold(a) and device.fold(b) and not device.fold(a)
    doc = device.document(3, NOW)
    assert doc["reading_count"] == 2
    assert doc["last_values"] == {"temp": 1.0}  # the later reading, whatever the order
    assert doc["first_seen"] == b.reading.ts and doc["tags"] == ["room:1"]
    again = DeviceState("dev-1", 0)
    again.fold(a)
    again.fold(b)
    assert len(again.merge_stored(doc).held) == 2 and again.summary["reading_count"] == 2


# --- any batching, order, replay, crash and eviction gives the buckets of one pass ----


class DictStore:
    """The store's side of a flush, against a dict: insert fails on an existing id."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def write(self, held: dict[str, BucketState], written: Callable[[str], bool]) -> None:
        for doc_id, state in held.items():
            if not state.dirty or not written(doc_id):
                continue
            if not state.stored and doc_id in self.docs:
                state.merge_stored(self.docs[doc_id])
                if not state.dirty:
                    continue
            # A copy, as the encoding to BSON makes: the document shares lists with
            # the held rollup, which later folds change in place.
            self.docs[doc_id] = copy.deepcopy(state.document(1, NOW, None))
            state.stored, state.dirty = True, False
            state.pending.clear()


def _fold_into(
    held: dict[str, BucketState], batch: list[PositionedReading], starts: BucketStarts
) -> None:
    for placed in batch:
        values = contributions(placed)
        for resolution, start in starts.of(placed.reading.ts):
            key = BucketKey("default", placed.reading.device_id, resolution, start)
            state = held.setdefault(key.doc_id, BucketState(key, placed.partition))
            state.fold(placed.partition, placed.offset, values)


def _one_pass(readings: list[Reading]) -> dict[tuple[str, str], Rollup]:
    buckets: dict[tuple[str, str], Rollup] = {}
    for r in readings:
        for resolution, width in RESOLUTIONS.items():
            key = BucketKey("default", r.device_id, resolution, bucket_start(r.ts, width))
            for metric, value in r.metrics.items():
                buckets.setdefault((key.doc_id, metric), Rollup()).add(value, r.ts)
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
    logs: list[list[PositionedReading]] = [[] for _ in range(partitions)]
    for r in readings:
        p = data.draw(st.integers(0, partitions - 1))
        logs[p].append(PositionedReading(p, len(logs[p]), r))
    committed = [0] * partitions
    store = DictStore()
    starts = BucketStarts(RESOLUTIONS)
    held: dict[str, BucketState] = {}
    while any(committed[p] < len(logs[p]) for p in range(partitions)):
        batch: list[PositionedReading] = []
        fetched = {}
        for p in range(partitions):
            size = data.draw(st.integers(1, 6))
            fetched[p] = logs[p][committed[p] : committed[p] + size]
            batch.extend(fetched[p])
        batch = data.draw(st.permutations(batch)) if len(batch) < 8 else batch
        _fold_into(held, sorted(batch, key=lambda pl: (pl.partition, pl.offset)), starts)
        if data.draw(st.booleans()):
            # A crash after the unordered bulk write reached some buckets, before
            # the commit: a new process, holding nothing, fetches the same records.
            store.write(held, lambda _: data.draw(st.booleans()))
            held = {}
            continue
        store.write(held, lambda _: True)
        for p, records in fetched.items():
            committed[p] += len(records)
        if data.draw(st.booleans()):
            # Clean buckets let go under the memory limit are merged back when needed.
            for doc_id in list(held)[: data.draw(st.integers(0, len(held)))]:
                del held[doc_id]
    expected = _one_pass(readings)
    stored = {
        (doc_id, metric): Rollup.from_fields(fields)
        for doc_id, doc in store.docs.items()
        for metric, fields in doc["metrics"].items()
    }
    assert stored.keys() == expected.keys()
    for (doc_id, metric), want in expected.items():
        got = stored[(doc_id, metric)]
        assert (got.count, got.sum, got.min, got.max) == (want.count, want.sum, want.min, want.max)
        assert got.sum == math.fsum(got_values(readings, doc_id, metric))
        assert (got.first, got.first_ts, got.last, got.last_ts) == (
            want.first,
            want.first_ts,
            want.last,
            want.last_ts,
        )
        assert got.sketch == want.sketch
        assert close(got.stddev, want.stddev, max(abs(got.min), abs(got.max)))


def got_values(readings: list[Reading], doc_id: str, metric: str) -> list[float]:
    _, device, resolution, start = parse_bucket_id(doc_id)
    width = RESOLUTIONS[resolution]
    return [
        r.metrics[metric]
        for r in readings
        if r.device_id == device and metric in r.metrics and bucket_start(r.ts, width) == start
    ]
