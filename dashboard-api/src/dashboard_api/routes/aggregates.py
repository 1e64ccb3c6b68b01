"""Rollup buckets (count, sum, min, max, average, ...), newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from telemetry_common.mongo import ROLLUPS

from dashboard_api.deps import (
    BAD_PARAMETER,
    DEVICE_ID_PATTERN,
    Db,
    DeviceFilter,
    From,
    Limit,
    MetricFilter,
    To,
    page,
    time_range,
)
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import RollupsPage
from dashboard_api.serialize import public

router = APIRouter(tags=["aggregates"])

Resolution = Annotated[
    str, Query(pattern=r"^\d+[smhd]$", description="bucket width, e.g. 1m", examples=["1m"])
]


async def _rollups(db: Db, query: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
    docs, next_cursor = await keyset_page(
        db[ROLLUPS], query, sort_key="timestamp", limit=limit, cursor=cursor
    )
    return page([public(doc) for doc in docs], next_cursor)


@router.get("/aggregated", response_model=RollupsPage, responses=BAD_PARAMETER)
async def list_aggregated(
    db: Db,
    limit: Limit,
    cursor: Cursor = None,
    device_id: DeviceFilter = None,
    metric: MetricFilter = None,
    resolution: Resolution = "1m",
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Rollup buckets across devices, newest first."""
    query: dict[str, Any] = {"resolution": resolution, **time_range("timestamp", start, end)}
    if device_id:
        query["device_id"] = device_id
    if metric:
        query["sensor_type"] = metric
    return await _rollups(db, query, limit, cursor)


@router.get("/devices/{device_id}/aggregates", response_model=RollupsPage, responses=BAD_PARAMETER)
async def device_aggregates(
    db: Db,
    limit: Limit,
    cursor: Cursor = None,
    device_id: str = Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"]),
    metric: MetricFilter = None,
    resolution: Resolution = "1m",
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """One device's rollup buckets, newest first."""
    query: dict[str, Any] = {
        "device_id": device_id,
        "resolution": resolution,
        **time_range("timestamp", start, end),
    }
    if metric:
        query["sensor_type"] = metric
    return await _rollups(db, query, limit, cursor)
