"""Raw readings, newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from telemetry_common.mongo import RAW

from dashboard_api.deps import (
    DEVICE_ID_PATTERN,
    Db,
    DeviceFilter,
    From,
    Limit,
    To,
    page,
    time_range,
)
from dashboard_api.schemas import ReadingsPage
from dashboard_api.serialize import public

router = APIRouter(tags=["telemetry"])


async def _readings(db: Db, query: dict[str, Any], limit: int) -> dict[str, Any]:
    cursor = db[RAW].find(query).sort("ts", -1).limit(limit)
    return page([public(doc, "event_id") async for doc in cursor])


@router.get("/telemetry", response_model=ReadingsPage)
async def list_telemetry(
    db: Db, limit: Limit, device_id: DeviceFilter = None, start: From = None, end: To = None
) -> dict[str, Any]:
    """Raw readings across devices, newest first."""
    query = {**time_range("ts", start, end)}
    if device_id:
        query["device_id"] = device_id
    return await _readings(db, query, limit)


@router.get("/devices/{device_id}/telemetry", response_model=ReadingsPage)
async def device_telemetry(
    db: Db,
    limit: Limit,
    device_id: str = Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"]),
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """One device's raw readings, newest first."""
    return await _readings(db, {"device_id": device_id, **time_range("ts", start, end)}, limit)
