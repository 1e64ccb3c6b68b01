"""Serving any interval from the stored rollups: which resolution, which window, merging.

Pure (no I/O) so the merging is unit-tested without a server. An interval is
served by the coarsest stored resolution whose width divides it (10m from 1m
buckets); buckets are epoch-aligned, so each stored bucket lies inside exactly
one interval bucket and merging loses nothing: count, sum, min and max of a
merged bucket are what the stored resolution would have given at that width.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from telemetry_common.domain.resolutions import bucket_start, resolution_seconds, serving_resolution
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.timefmt import iso_z, to_utc_ms
from telemetry_common.http.api_errors import ApiError


def choose_resolution(interval: str, stored: Mapping[str, int]) -> tuple[int, str]:
    """(interval width in seconds, stored resolution to merge), or a 422 naming ``interval``."""
    try:
        width = resolution_seconds(interval)
    except ValueError as exc:
        raise ApiError(422, "interval", str(exc)) from None
    source = serving_resolution(width, stored)
    if source is None:
        raise ApiError(
            422,
            "interval",
            f"{interval} cannot be served: it must be a multiple of a stored resolution "
            f"({', '.join(stored)})",
        )
    return width, source


def window(
    start: datetime, end: datetime, width_s: int, max_buckets: int
) -> tuple[datetime, datetime]:
    """The interval buckets from the one holding ``start`` up to ``end`` (exclusive), whole."""
    start, end = to_utc_ms(start), to_utc_ms(end)
    if start >= end:
        raise ApiError(422, "from_time", "must be before to_time")
    first = bucket_start(start, width_s)
    last = bucket_start(end - timedelta(milliseconds=1), width_s)
    buckets = int((last - first).total_seconds() // width_s) + 1
    if buckets > max_buckets:
        raise ApiError(
            422,
            "from_time",
            f"the range holds {buckets} buckets of this interval; at most {max_buckets} "
            "per request (narrow the range or widen the interval)",
        )
    return first, last + timedelta(seconds=width_s)


def merge_into_intervals(docs: Iterable[Mapping[str, Any]], width_s: int) -> dict[datetime, Rollup]:
    """One metric's stored buckets (rows, as metric_rows gives them) merged into interval
    buckets, keyed by interval start."""
    merged: dict[datetime, Rollup] = {}
    for doc in docs:
        start = bucket_start(doc["timestamp"], width_s)
        merged.setdefault(start, Rollup()).merge(Rollup.from_fields(doc))
    return merged


def interval_bucket(start: datetime, width_s: int, rollup: Rollup) -> dict[str, Any]:
    percentiles = rollup.sketch.quantiles()
    return {
        "start": iso_z(start),
        "end": iso_z(start + timedelta(seconds=width_s)),
        "count": rollup.count,
        "sum": rollup.sum,
        "avg": rollup.average,
        "min": rollup.min,
        "max": rollup.max,
        "stddev": rollup.stddev,
        **percentiles,
    }
