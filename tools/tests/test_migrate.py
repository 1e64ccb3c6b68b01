"""telemetry-migrate's pure part: one bucket's legacy documents -> its current document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, bucket_id, metric_rows
from telemetry_tools.migrate import (
    METRIC_FIELDS,
    bucket_upsert,
    buckets_starting_after,
    merged_watermarks,
    migrated_bucket,
)

START = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)
WRITTEN = datetime(2025, 1, 15, 10, 5, tzinfo=UTC)


def legacy(
    metric: str,
    values: list[float],
    applied: dict[str, int],
    *,
    device: str = "dev-1",
    resolution: str = "1m",
    start: datetime = START,
    written: datetime = WRITTEN,
    keep_for: timedelta | None = timedelta(days=7),
) -> dict[str, Any]:
    """A document as the layout before wrote it."""
    rollup = Rollup()
    for i, value in enumerate(values):
        rollup.add(value, start + timedelta(seconds=i))
    doc = {
        "_id": f"{device}|{metric}|{resolution}|{int(start.timestamp())}",
        "device_id": device,
        "sensor_type": metric,
        "resolution": resolution,
        "timestamp": start,
        **rollup.to_fields(),
        "updated_at": written,
        "_applied": applied,
        "_v": 3,
    }
    if keep_for is not None:
        doc["expire_at"] = written + keep_for
    return doc


def test_every_metric_of_the_bucket_lands_in_one_document_with_its_fields() -> None:
    docs = [legacy("temp", [20.0, 21.5, 19.0], {"0": 7}), legacy("humidity", [55.0], {"0": 7})]
    new = migrated_bucket(docs)
    assert new["_id"] == bucket_id(DEFAULT_PROJECT, "dev-1", "1m", START)
    assert {k: new[k] for k in ("project_id", "device_id", "resolution", "timestamp")} == {
        "project_id": DEFAULT_PROJECT,
        "device_id": "dev-1",
        "resolution": "1m",
        "timestamp": START,
    }
    assert new["_e"] == 0
    for doc in docs:
        assert new["metrics"][doc["sensor_type"]] == {name: doc[name] for name in METRIC_FIELDS}


def test_rows_served_from_the_new_document_equal_the_legacy_documents() -> None:
    docs = [legacy("temp", [20.0, 21.5], {"0": 3}), legacy("cpu", [0.4, 0.9, 0.1], {"0": 3})]
    new = migrated_bucket(docs)
    for doc in docs:
        [row] = metric_rows(new, doc["sensor_type"])
        served = [name for name in row if name != "_id"]
        assert {name: row[name] for name in served} == {name: doc[name] for name in served}


def test_bookkeeping_of_the_layout_before_is_not_copied_into_metrics() -> None:
    new = migrated_bucket([legacy("temp", [1.0], {"0": 1})])
    assert set(new["metrics"]["temp"]) == set(METRIC_FIELDS)


def test_fields_a_legacy_document_lacks_stay_absent() -> None:
    # Buckets written before exact sums carry no sum_partials; the aggregator
    # falls back to the rounded sum, so nothing is made up here.
    doc = legacy("temp", [1.0, 2.0], {"0": 1})
    del doc["sum_partials"], doc["m2"]
    fields = migrated_bucket([doc])["metrics"]["temp"]
    assert "sum_partials" not in fields and "m2" not in fields
    assert fields["sum"] == 3.0


def test_updated_at_and_expire_at_are_the_latest_of_the_metrics() -> None:
    later = WRITTEN + timedelta(minutes=3)
    docs = [
        legacy("temp", [1.0], {"0": 1}, written=later, keep_for=timedelta(days=1)),
        legacy("cpu", [1.0], {"0": 1}, keep_for=timedelta(days=7)),
    ]
    new = migrated_bucket(docs)
    assert new["updated_at"] == later
    assert new["expire_at"] == WRITTEN + timedelta(days=7)


def test_a_bucket_kept_forever_has_no_expiry() -> None:
    new = migrated_bucket([legacy("temp", [1.0], {"0": 1}, resolution="1d", keep_for=None)])
    assert "expire_at" not in new
    _, update = bucket_upsert(new)
    assert "expire_at" not in update["$max"]


def test_document_watermarks_are_the_highest_offset_per_partition() -> None:
    docs = [
        legacy("temp", [1.0], {"0": 120, "1": 4}),
        legacy("humidity", [1.0], {"0": 118, "1": 9}),
        legacy("cpu", [1.0], {"2": 30}),
    ]
    assert merged_watermarks(docs) == {"0": 120, "1": 9, "2": 30}
    assert migrated_bucket(docs)["_applied"] == {"0": 120, "1": 9, "2": 30}


def test_a_metric_behind_the_document_keeps_its_own_watermarks() -> None:
    # A crash between the writes of one batch left humidity at 118: a replay of
    # 119-120 must reach humidity and not be counted again in temp.
    docs = [
        legacy("temp", [1.0], {"0": 120}),
        legacy("humidity", [1.0], {"0": 118}),
        legacy("pressure", [1.0], {"0": 120}),
    ]
    metrics = migrated_bucket(docs)["metrics"]
    assert metrics["humidity"]["_applied"] == {"0": 118}
    assert "_applied" not in metrics["temp"]
    assert "_applied" not in metrics["pressure"]


def test_a_metric_missing_a_partition_keeps_its_own_watermarks() -> None:
    docs = [legacy("temp", [1.0], {"0": 5, "1": 2}), legacy("cpu", [1.0], {"0": 5})]
    metrics = migrated_bucket(docs)["metrics"]
    assert metrics["cpu"]["_applied"] == {"0": 5}
    assert "_applied" not in metrics["temp"]


def test_the_write_sets_each_metric_and_raises_only_bookkeeping() -> None:
    docs = [legacy("temp", [1.0], {"0": 120}), legacy("humidity", [2.0], {"0": 118})]
    new = migrated_bucket(docs)
    _, write = bucket_upsert(new)
    assert set(write) == {"$setOnInsert", "$set", "$max"}
    assert write["$set"] == {
        "metrics.temp": new["metrics"]["temp"],
        "metrics.humidity": new["metrics"]["humidity"],
    }
    assert write["$max"] == {
        "_applied.0": 120,
        "updated_at": new["updated_at"],
        "expire_at": new["expire_at"],
    }
    assert write["$setOnInsert"] == {
        "project_id": DEFAULT_PROJECT,
        "device_id": "dev-1",
        "resolution": "1m",
        "timestamp": START,
        "_e": 0,
    }


def test_the_write_never_matches_a_document_a_live_owner_wrote() -> None:
    query, _ = bucket_upsert(migrated_bucket([legacy("temp", [1.0], {"0": 1})]))
    # The aggregator writes _e >= 1; an upsert that does not match such a
    # document fails on its _id instead of touching it.
    assert query == {
        "_id": bucket_id(DEFAULT_PROJECT, "dev-1", "1m", START),
        "_e": {"$in": [0, None]},
    }


def test_documents_of_two_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="more than one bucket"):
        migrated_bucket([legacy("temp", [1.0], {}), legacy("temp", [1.0], {}, resolution="5m")])


def test_a_bucket_is_written_by_the_batch_holding_its_first_legacy_document() -> None:
    first = legacy("cpu", [1.0], {"0": 1})  # "dev-1|cpu|..." sorts first
    second = legacy("temp", [1.0], {"0": 1})
    other = legacy("temp", [1.0], {"0": 1}, start=START + timedelta(minutes=1))
    assert buckets_starting_after([first, second, other], None) == [[first, second], [other]]
    # After first's batch: its bucket is done, whole; other's starts later.
    assert buckets_starting_after([first, second, other], first["_id"]) == [[other]]
