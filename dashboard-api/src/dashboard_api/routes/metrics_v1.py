"""`GET /v1/metrics/*`: buckets of any servable interval (aggregate), and figures over
any window (count, distinct devices, percentiles), from the rollups where they can be."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from telemetry_common.domain.identifiers import (
    DEVICE_ID_PATTERN,
    DEVICE_ID_RE,
    METRIC_NAME_PATTERN,
    RESOLUTION_PATTERN,
)
from telemetry_common.domain.rollup import Rollup
from telemetry_common.domain.rollup_layout import RowSelection, bucket_filter, metric_rows
from telemetry_common.domain.timefmt import iso_z, to_utc_ms, utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import RAW as RAW_READINGS
from telemetry_common.infra.mongo import ROLLUPS

from dashboard_api.auth import Reader, read_router
from dashboard_api.deps import Db
from dashboard_api.intervals import choose_resolution, interval_bucket, merge_into_intervals, window
from dashboard_api.schemas import (
    IntervalAggregateOut,
    WindowCountOut,
    WindowDevicesOut,
    WindowPercentilesOut,
)
from dashboard_api.windowed import RAW, Piece, pieces

router = read_router(prefix="/v1", tags=["aggregates"])

DEFAULT_SPAN = timedelta(days=1)


@router.get(
    "/metrics/aggregate",
    response_model=IntervalAggregateOut,
    responses={
        422: {
            "description": "a parameter is bad or the interval cannot be served",
            "model": ErrorOut,
        }
    },
)
async def metric_aggregate(
    request: Request,
    db: Db,
    caller: Reader,
    metric: Annotated[
        str,
        Query(pattern=METRIC_NAME_PATTERN, description="metric name", examples=["temperature_c"]),
    ],
    device_id: Annotated[
        str | None,
        Query(
            pattern=DEVICE_ID_PATTERN,
            description="one device; all devices merged when absent",
            examples=["dev-1"],
        ),
    ] = None,
    from_time: Annotated[
        datetime | None,
        Query(
            description="inclusive start, ISO 8601; rounded down to the interval "
            "(default: a day before to_time, or fewer buckets than MAX_PAGE_SIZE)",
            examples=["2025-01-15T00:00:00Z"],
        ),
    ] = None,
    to_time: Annotated[
        datetime | None,
        Query(
            description="exclusive end, ISO 8601 (default: now)", examples=["2025-01-16T00:00:00Z"]
        ),
    ] = None,
    interval: Annotated[
        str,
        Query(
            pattern=RESOLUTION_PATTERN,
            description="bucket width: a stored resolution or a multiple of one (10m from 1m)",
            examples=["10m"],
        ),
    ] = "1h",
) -> dict[str, Any]:
    """Buckets of ``interval``: count, sum, avg, min, max, stddev, p50/p95/p99; oldest first."""
    settings = request.app.state.settings
    width, source = choose_resolution(interval, settings.rollup_plan.stored)
    end = to_time or utcnow()
    if from_time is None:
        # A day back, or as many buckets as one answer holds, whichever is shorter.
        span = min(DEFAULT_SPAN, timedelta(seconds=width * (settings.max_page_size - 1)))
        from_time = end - span
    start, end = window(from_time, end, width, settings.max_page_size)
    query = bucket_filter(source, RowSelection(caller.project_id, device_id, metric, start, end))
    # The metric's whole fields, merge state included: merging needs it.
    fields = {"device_id": 1, "resolution": 1, "timestamp": 1, f"metrics.{metric}": 1}
    merged = merge_into_intervals(
        [row async for doc in db[ROLLUPS].find(query, fields) for row in metric_rows(doc, metric)],
        width,
    )
    buckets = [interval_bucket(s, width, merged[s]) for s in sorted(merged)]
    return {
        "metric": metric,
        "device_id": device_id,
        "interval": interval,
        "resolution": source,
        "from_time": iso_z(start),
        "to_time": iso_z(end),
        "buckets": buckets,
        "count": len(buckets),
    }


# --- figures over any window ------------------------------------------------------------

MAX_DEVICES = 100
DEFAULT_WINDOW = timedelta(hours=1)

WindowMetric = Annotated[
    str | None,
    Query(
        pattern=METRIC_NAME_PATTERN,
        description="readings carrying this metric; any metric when absent (then counted "
        "from the raw readings alone)",
        examples=["temperature_c"],
    ),
]
WindowDevices = Annotated[
    list[str] | None,
    Query(
        alias="device_id",
        description=f"repeat for several devices (at most {MAX_DEVICES}); every device when absent",
        examples=[["dev-1", "dev-2"]],
    ),
]
WindowTag = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        description="only readings carrying this tag (served from the raw readings: rollups "
        "keep no tags)",
        examples=["room:101"],
    ),
]
WindowFrom = Annotated[
    datetime | None,
    Query(
        description="inclusive start, ISO 8601, to the millisecond (default: an hour before "
        "to_time)",
        examples=["2025-01-15T10:00:00Z"],
    ),
]
WindowTo = Annotated[
    datetime | None,
    Query(description="exclusive end, ISO 8601 (default: now)", examples=["2025-01-15T11:00:00Z"]),
]
WINDOW_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "a parameter is bad; `errors` names it", "model": ErrorOut}
}


@dataclass(frozen=True)
class Window:
    """What a windowed figure is of: a project's readings in [start, end), maybe of one
    metric, some devices, one tag; and the pieces it is served from."""

    project_id: str
    metric: str | None
    device_ids: list[str] | None
    tag: str | None
    start: datetime
    end: datetime
    pieces: list[Piece]
    # Width (seconds) of each stored resolution the pieces may come from.
    widths: Mapping[str, int]

    def described(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "device_ids": self.device_ids,
            "tag": self.tag,
            "from_time": iso_z(self.start),
            "to_time": iso_z(self.end),
            "served_from": sorted(
                {piece.source for piece in self.pieces},
                key=lambda source: -self.widths.get(source, 0),
            ),
        }

    def raw_query(self, piece: Piece) -> dict[str, Any]:
        query: dict[str, Any] = {
            "project_id": self.project_id,
            "ts": {"$gte": piece.start, "$lt": piece.end},
        }
        if self.device_ids is not None:
            query["device_id"] = {"$in": self.device_ids}
        if self.tag is not None:
            query["tags"] = self.tag
        if self.metric is not None:
            query[f"metrics.{self.metric}"] = {"$exists": True}
        return query

    def bucket_queries(self, piece: Piece) -> list[dict[str, Any]]:
        """One per device asked for (one for all without): bucket ids lead with the device."""
        devices: list[str | None] = list(self.device_ids) if self.device_ids else [None]
        return [
            bucket_filter(
                piece.source,
                RowSelection(self.project_id, device, self.metric, piece.start, piece.end),
            )
            for device in devices
        ]


@dataclass(frozen=True)
class Asked:
    """The window and scope a request names, checked by window_of."""

    device_ids: list[str] | None
    tag: str | None
    from_time: datetime | None
    to_time: datetime | None


async def asked(
    device_ids: WindowDevices = None,
    tag: WindowTag = None,
    from_time: WindowFrom = None,
    to_time: WindowTo = None,
) -> Asked:
    return Asked(device_ids, tag, from_time, to_time)


def window_of(request: Request, project_id: str, metric: str | None, asked: Asked) -> Window:
    end = to_utc_ms(asked.to_time) if asked.to_time is not None else utcnow()
    start = to_utc_ms(asked.from_time) if asked.from_time is not None else end - DEFAULT_WINDOW
    if start >= end:
        raise ApiError(422, "from_time", "must be before to_time")
    device_ids = asked.device_ids
    if device_ids is not None:
        if len(device_ids) > MAX_DEVICES:
            raise ApiError(422, "device_id", f"at most {MAX_DEVICES} devices per request")
        for device in device_ids:
            if not DEVICE_ID_RE.fullmatch(device):
                raise ApiError(
                    422, "device_id", "must be 1-128 characters of letters, digits and -_.:"
                )
        device_ids = list(dict.fromkeys(device_ids))
    # Rollups are kept per metric and without tags: anything else is counted raw.
    stored = request.app.state.settings.rollup_plan.stored if metric and not asked.tag else {}
    windows = pieces(start, end, stored)
    return Window(project_id, metric, device_ids, asked.tag, start, end, windows, stored)


Scope = Annotated[Asked, Depends(asked)]


async def any_window(
    request: Request, caller: Reader, scope: Scope, metric: WindowMetric = None
) -> Window:
    return window_of(request, caller.project_id, metric, scope)


async def metric_window(
    request: Request,
    caller: Reader,
    scope: Scope,
    metric: Annotated[
        str,
        Query(pattern=METRIC_NAME_PATTERN, description="metric name", examples=["temperature_c"]),
    ],
) -> Window:
    return window_of(request, caller.project_id, metric, scope)


AnyWindow = Annotated[Window, Depends(any_window)]
MetricWindow = Annotated[Window, Depends(metric_window)]


@router.get("/metrics/count", response_model=WindowCountOut, responses=WINDOW_ERRORS)
async def window_count(db: Db, window: AnyWindow) -> dict[str, Any]:
    """Readings in any window (to the millisecond), of a metric, devices or a tag."""
    count = 0
    for piece in window.pieces:
        if piece.source == RAW:
            count += await db[RAW_READINGS].count_documents(window.raw_query(piece))
            continue
        assert window.metric is not None  # only a metric's readings are counted from rollups
        for query in window.bucket_queries(piece):
            async for doc in db[ROLLUPS].find(query, {f"metrics.{window.metric}": 1}):
                count += Rollup.from_fields(doc["metrics"][window.metric]).count
    return {**window.described(), "count": count}


@router.get("/metrics/distinct-devices", response_model=WindowDevicesOut, responses=WINDOW_ERRORS)
async def window_distinct_devices(db: Db, window: AnyWindow) -> dict[str, Any]:
    """Distinct devices that sent a reading in any window (an exact count)."""
    devices: set[str] = set()
    for piece in window.pieces:
        if piece.source == RAW:
            devices.update(await db[RAW_READINGS].distinct("device_id", window.raw_query(piece)))
            continue
        for query in window.bucket_queries(piece):
            devices.update(await db[ROLLUPS].distinct("device_id", query))
    return {**window.described(), "devices": len(devices)}


@router.get("/metrics/p95", response_model=WindowPercentilesOut, responses=WINDOW_ERRORS)
async def window_percentiles(db: Db, window: MetricWindow) -> dict[str, Any]:
    """The p95 (with p50 and p99) of a metric's values in any window, merged from the
    buckets' sketches and the raw values at the edges."""
    metric = window.metric
    assert metric is not None  # MetricWindow requires it
    merged = Rollup()
    for piece in window.pieces:
        if piece.source == RAW:
            projection = {"ts": 1, f"metrics.{metric}": 1}
            async for doc in db[RAW_READINGS].find(window.raw_query(piece), projection):
                merged.add(float(doc["metrics"][metric]), doc["ts"])
            continue
        for query in window.bucket_queries(piece):
            async for doc in db[ROLLUPS].find(query, {f"metrics.{metric}": 1}):
                merged.merge(Rollup.from_fields(doc["metrics"][metric]))
    quantiles = merged.sketch.quantiles()
    return {
        **window.described(),
        "count": merged.count,
        "p50": quantiles["p50"],
        "p95": quantiles["p95"],
        "p99": quantiles["p99"],
    }
