"""How rollups are stored: one document per (project, device, resolution, bucket), all metrics.

The API serves rollups one row per metric (``sensor_type``, ``count``, ``sum``,
...); the store keeps the metrics of a bucket together so that a reading with
several metrics costs one document write per bucket instead of one per metric.
Measured on the local store (secantusd, batches of 1,000): one small document
per reading inserts at ~30,000/s with three indexes, a document per metric with
five indexes at ~14,000/s, and rewriting an existing document costs about three
inserts, so both the number of documents and of indexes are kept low.

``_id`` is ``project|device|resolution|start`` with the start in zero-padded
epoch seconds, so one device's buckets of one resolution are a contiguous
``_id`` range in time order: a device's query needs no index beyond ``_id``.
Listings across devices use ``project_resolution_ts_id``.

Only the stored resolutions have documents (see
:class:`telemetry_common.domain.resolutions.RollupPlan`); a resolution served by merging
a stored one (5m from 1m) is read from the stored documents of its window. For
listings across devices those carry ``windows.<resolution>``, the start of the
window each falls in, under an index per merged resolution that orders them
window first, then by ``_id``: a window's documents come grouped by device.

Writers' bookkeeping: ``_applied`` (highest offset folded per Kafka partition)
and ``_e`` (the epoch of the partition owner that wrote it, see
:mod:`telemetry_common.infra.ownership`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from telemetry_common.domain.resolutions import EPOCH, bucket_start
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.sketch import bin_key

ROLLUPS = "rollups"
# The layout before this one: one document per (device, metric, resolution, bucket).
LEGACY_ROLLUPS = "aggregated_data"
DEFAULT_PROJECT = "default"


def scoped_id(project_id: str, natural_id: str) -> str:
    """A device summary's or a raw reading's ``_id``: its own id in the default project
    (as stored before projects, so nothing moves), ``project|id`` in any other, since
    device ids and event ids are only unique within a project."""
    return natural_id if project_id == DEFAULT_PROJECT else f"{project_id}|{natural_id}"


# Epoch seconds fit 11 digits until the year 5138; padding keeps ids in time order.
_START_DIGITS = 11
# Per-metric fields a bucket document holds, in the order rows list them.
ROW_FIELDS = (
    "count",
    "sum",
    "min",
    "max",
    "average",
    "stddev",
    "first",
    "first_ts",
    "last",
    "last_ts",
    "p50",
    "p95",
    "p99",
)


def bucket_id(project_id: str, device_id: str, resolution: str, start: datetime) -> str:
    # `|` never occurs in a project id, a device id or a resolution.
    seconds = int((start - EPOCH).total_seconds())
    return f"{project_id}|{device_id}|{resolution}|{_padded(seconds)}"


class BucketId(NamedTuple):
    project_id: str
    device_id: str
    resolution: str
    start: datetime


def parse_bucket_id(doc_id: str) -> BucketId:
    """The parts of a :func:`bucket_id`, or of a :func:`row_id` (its metric is left out)."""
    project_id, device_id, resolution, seconds = doc_id.split("|")[:4]
    return BucketId(project_id, device_id, resolution, EPOCH + timedelta(seconds=int(seconds)))


def device_id_range(
    project_id: str,
    device_id: str,
    resolution: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, str]:
    """The ``_id`` range of one device's buckets of ``resolution`` starting in [start, end)."""
    prefix = f"{project_id}|{device_id}|{resolution}|"
    # Digits sort before ';' (the character after '9'), so prefix + ';' bounds the prefix.
    # A bound between two whole seconds moves up to the next: a bucket starting at
    # 10:00:00 is before a range from 10:00:00.5, and inside a range up to it.
    low = prefix + _padded(_whole_seconds_up(start)) if start else prefix
    high = prefix + _padded(_whole_seconds_up(end)) if end else prefix + ";"
    return {"$gte": low, "$lt": high}


def _whole_seconds_up(moment: datetime) -> int:
    return max(math.ceil((moment - EPOCH).total_seconds()), 0)


def _padded(seconds: int) -> str:
    return f"{seconds:0{_START_DIGITS}d}"


def bucket_document(
    *,
    project_id: str,
    device_id: str,
    resolution: str,
    start: datetime,
    metrics: Mapping[str, Mapping[str, Any]],
    applied: Mapping[str, int],
    epoch: int,
    now: datetime,
    keep_for: timedelta | None,
    windows: Mapping[str, datetime] | None = None,
) -> dict[str, Any]:
    """A bucket's document; ``metrics`` maps each metric to its Rollup.to_fields(), and
    ``windows`` each resolution merged from this one to the window the bucket is in."""
    doc: dict[str, Any] = {
        "_id": bucket_id(project_id, device_id, resolution, start),
        "project_id": project_id,
        "device_id": device_id,
        "resolution": resolution,
        "timestamp": start,
        "metrics": dict(metrics),
        "updated_at": now,
        "_applied": dict(applied),
        "_e": epoch,
    }
    if windows:
        doc["windows"] = dict(windows)
    if keep_for is not None:
        # A TTL index with expireAfterSeconds=0 on expire_at lets each resolution
        # keep its own retention in one collection; counted from the last write.
        doc["expire_at"] = now + keep_for
    return doc


def stored_fields(rollup: Rollup) -> dict[str, Any]:
    """What a bucket document holds for one metric.

    A metric with one value in the bucket (most fine buckets of a device that
    reports less often than their width) is stored as just that value and its
    time: an eighth of the bytes, which the store writes and indexes the faster
    and the worker builds and encodes the faster. Readers expand it
    (:func:`served_fields`); Rollup.from_fields reads both forms.
    """
    if rollup.count == 1:
        assert rollup.first is not None and rollup.first_ts is not None
        return {"value": rollup.first, "ts": rollup.first_ts}
    return rollup.to_fields()


def served_fields(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored metric's every field (count, sum, ..., p99 and the merge state)."""
    if "count" in fields or "value" not in fields:
        return fields
    value = fields["value"]
    return Rollup.single_fields(value, fields["ts"], bin_key(value))


def row_id(doc_id: str, metric: str) -> str:
    return f"{doc_id}|{metric}"


def metric_rows(doc: Mapping[str, Any], metric: str | None = None) -> Iterator[dict[str, Any]]:
    """The per-metric rows the API serves from one bucket document, metrics in descending
    name order (the order of their row ids, which break ties in newest-first listings)."""
    metrics: Mapping[str, Mapping[str, Any]] = doc.get("metrics", {})
    names = [metric] if metric is not None else sorted(metrics, reverse=True)
    for name in names:
        fields = metrics.get(name)
        if fields is None:
            continue
        row: dict[str, Any] = {
            "_id": row_id(doc["_id"], name),
            "device_id": doc["device_id"],
            "sensor_type": name,
            "resolution": doc["resolution"],
            "timestamp": doc["timestamp"],
            **served_fields(fields),
            "updated_at": doc.get("updated_at"),
        }
        if "expire_at" in doc:
            row["expire_at"] = doc["expire_at"]
        yield row


@dataclass(frozen=True, slots=True)
class RowSelection:
    """Which rollup rows a listing wants: one project's, of one device or all, of one
    metric or all, of the buckets starting in [start, end) (either bound open)."""

    project_id: str = DEFAULT_PROJECT
    device_id: str | None = None
    metric: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def bucket_filter(resolution: str, selection: RowSelection = RowSelection()) -> dict[str, Any]:
    """A find() filter for the bucket documents of ``resolution`` holding ``selection``."""
    return _stored_filter(resolution, "timestamp", selection)


def _stored_filter(resolution: str, time_field: str, selection: RowSelection) -> dict[str, Any]:
    """Stored buckets of ``resolution`` whose start (for one device) or ``time_field``
    (across devices) is in [start, end)."""
    project_id, device_id, metric = selection.project_id, selection.device_id, selection.metric
    start, end = selection.start, selection.end
    query: dict[str, Any]
    if device_id is not None:
        query = {"_id": device_id_range(project_id, device_id, resolution, start, end)}
    else:
        query = {"project_id": project_id, "resolution": resolution}
        span: dict[str, datetime] = {}
        if start is not None:
            span["$gte"] = start
        if end is not None:
            span["$lt"] = end
        if span:
            query[time_field] = span
    if metric is not None:
        query[f"metrics.{metric}"] = {"$exists": True}
    return query


def device_prefix_range(project_id: str, device_prefix: str) -> dict[str, str]:
    """The ``_id`` range of every bucket of the devices whose id starts with ``device_prefix``."""
    low = f"{project_id}|{device_prefix}"
    # Above every character a device id may hold (they are ASCII).
    return {"$gte": low, "$lt": low + "\U0010ffff"}


def row_projection(metric: str) -> dict[str, int]:
    """A find() projection of what ``metric_rows(doc, metric)`` serves: one metric's public
    figures, leaving the other metrics, the merge state and the bookkeeping on the server."""
    return {
        "device_id": 1,
        "resolution": 1,
        "timestamp": 1,
        "updated_at": 1,
        **{f"metrics.{metric}.{name}": 1 for name in (*ROW_FIELDS, "value", "ts")},
    }


# --- resolutions merged at read time from a stored one ---------------------------------


def windows_of(start: datetime, merged: Mapping[str, int]) -> dict[str, datetime]:
    """The window of each merged resolution (name -> width) that a bucket starting at
    ``start`` falls in."""
    return {name: bucket_start(start, width) for name, width in merged.items()}


def window_field(resolution: str) -> str:
    return f"windows.{resolution}"


def window_index_name(resolution: str) -> str:
    return f"project_resolution_window_{resolution}_id"


def _window_at_or_after(moment: datetime, width_s: int) -> datetime:
    start = bucket_start(moment, width_s)
    return start if start == moment else start + timedelta(seconds=width_s)


def merged_filter(
    source: str, resolution: str, width_s: int, selection: RowSelection
) -> dict[str, Any]:
    """A find() filter for the ``source`` documents of the ``resolution`` buckets (merged
    from ``source``) that start in [start, end)."""
    # A merged bucket starting in [start, end) is the source buckets starting from
    # its window's start on: from the first window starting at or after ``start``.
    start, end = selection.start, selection.end
    windows = replace(
        selection,
        start=_window_at_or_after(start, width_s) if start is not None else None,
        end=_window_at_or_after(end, width_s) if end is not None else None,
    )
    return _stored_filter(source, window_field(resolution), windows)


def merged_projection(metric: str) -> dict[str, int]:
    """What merging needs of one metric (all its fields, merge state included)."""
    return {
        "device_id": 1,
        "timestamp": 1,
        "updated_at": 1,
        "expire_at": 1,
        f"metrics.{metric}": 1,
    }


def merged_bucket(
    project_id: str,
    device_id: str,
    resolution: str,
    window: datetime,
    docs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The bucket of ``resolution`` starting at ``window``, shaped as if stored, from the
    stored documents of one device that lie in it."""
    if len(docs) == 1:
        metrics = dict(docs[0].get("metrics", {}))
    else:
        rollups: dict[str, Rollup] = {}
        for doc in docs:
            for name, fields in doc.get("metrics", {}).items():
                rollups.setdefault(name, Rollup()).merge(Rollup.from_fields(fields))
        metrics = {name: stored_fields(rollup) for name, rollup in rollups.items()}
    merged: dict[str, Any] = {
        "_id": bucket_id(project_id, device_id, resolution, window),
        "project_id": project_id,
        "device_id": device_id,
        "resolution": resolution,
        "timestamp": window,
        "metrics": metrics,
        "updated_at": max((d["updated_at"] for d in docs if d.get("updated_at")), default=None),
    }
    expiries = [d.get("expire_at") for d in docs]
    if expiries and all(e is not None for e in expiries):
        # Served until its last part expires.
        merged["expire_at"] = max(e for e in expiries if e is not None)
    return merged
