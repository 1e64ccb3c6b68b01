"""`GET /v1/metrics/aggregate`: buckets of any servable interval, in the shape its clients read."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from telemetry_common.domain.identifiers import (
    DEVICE_ID_PATTERN,
    METRIC_NAME_PATTERN,
    RESOLUTION_PATTERN,
)
from telemetry_common.domain.rollup_layout import RowSelection, bucket_filter, metric_rows
from telemetry_common.domain.timefmt import iso_z, utcnow
from telemetry_common.http.api_errors import ErrorOut
from telemetry_common.infra.mongo import ROLLUPS

from dashboard_api.auth import Reader, read_router
from dashboard_api.deps import Db
from dashboard_api.intervals import choose_resolution, interval_bucket, merge_into_intervals, window
from dashboard_api.schemas import IntervalAggregateOut

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
