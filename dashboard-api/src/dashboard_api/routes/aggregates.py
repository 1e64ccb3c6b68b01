"""Rollup buckets (count, sum, min, max, average, ...), one row per metric, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query, Request
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN, RESOLUTION_PATTERN
from telemetry_common.domain.rollup_layout import RowSelection
from telemetry_common.domain.timefmt import to_utc_ms
from telemetry_common.infra.mongo import ROLLUPS

from dashboard_api.auth import Reader, read_router
from dashboard_api.deps import (
    BAD_PARAMETER,
    Db,
    DeviceFilter,
    From,
    Limit,
    MetricFilter,
    To,
    page,
    time_range,
)
from dashboard_api.paging import Cursor
from dashboard_api.rollup_pages import MergedFrom, rollup_page
from dashboard_api.schemas import RollupsPage
from dashboard_api.serialize import as_served

router = read_router(tags=["aggregates"])

Resolution = Annotated[
    str, Query(pattern=RESOLUTION_PATTERN, description="bucket width, e.g. 1m", examples=["1m"])
]


@router.get("/aggregated", response_model=RollupsPage, responses=BAD_PARAMETER)
async def list_aggregated(
    request: Request,
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    device_id: DeviceFilter = None,
    metric: MetricFilter = None,
    resolution: Resolution = "1m",
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Rollup buckets across devices, newest first."""
    time_range("timestamp", start, end)  # refuses an empty or inverted range
    plan = request.app.state.settings.rollup_plan
    source = plan.derived.get(resolution)
    rows, next_cursor = await rollup_page(
        db[ROLLUPS],
        resolution,
        RowSelection(
            caller.project_id,
            device_id,
            metric,
            to_utc_ms(start) if start is not None else None,
            to_utc_ms(end) if end is not None else None,
        ),
        limit=limit,
        cursor=cursor,
        merged_from=MergedFrom(source, plan.served[resolution]) if source else None,
    )
    return page([as_served(row) for row in rows], next_cursor)


@router.get("/devices/{device_id}/aggregates", response_model=RollupsPage, responses=BAD_PARAMETER)
async def device_aggregates(
    request: Request,
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    device_id: str = Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"]),
    metric: MetricFilter = None,
    resolution: Resolution = "1m",
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """One device's rollup buckets, newest first: /aggregated for one device."""
    return await list_aggregated(
        request, db, caller, limit, cursor, device_id, metric, resolution, start, end
    )
