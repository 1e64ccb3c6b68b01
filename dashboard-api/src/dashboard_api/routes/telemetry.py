"""Raw readings, newest first: the listings, tag search and a device's recent events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.infra.mongo import RAW

from dashboard_api.auth import Caller, Reader, read_router
from dashboard_api.deps import (
    BAD_PARAMETER,
    Db,
    DeviceFilter,
    From,
    Limit,
    TagFilter,
    To,
    page,
    time_range,
)
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import ReadingsPage
from dashboard_api.serialize import as_served

router = read_router(tags=["telemetry"])

DevicePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])]
FromTime = Annotated[
    datetime | None,
    Query(
        description="inclusive start, ISO 8601 (UTC if no offset)",
        examples=["2025-01-15T00:00:00Z"],
    ),
]
ToTime = Annotated[
    datetime | None,
    Query(
        description="exclusive end, ISO 8601 (UTC if no offset)", examples=["2025-01-16T00:00:00Z"]
    ),
]
V1_RANGE = ("from_time", "to_time")


async def _readings(
    db: Db,
    caller: Caller,
    limit: int,
    cursor: str | None,
    *,
    device_id: str | None = None,
    tag: str | None = None,
    window: dict[str, Any],
) -> dict[str, Any]:
    """One page of the caller's project's readings, newest first (``window``: a
    ``time_range`` on ``ts``)."""
    query: dict[str, Any] = {"project_id": caller.project_id, **window}
    if device_id:
        query["device_id"] = device_id
    if tag:
        query["tags"] = tag
    docs, next_cursor = await keyset_page(db[RAW], query, sort_key="ts", limit=limit, cursor=cursor)
    return page([as_served(doc, "event_id") for doc in docs], next_cursor)


@router.get("/telemetry", response_model=ReadingsPage, responses=BAD_PARAMETER)
async def list_telemetry(
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    device_id: DeviceFilter = None,
    tag: TagFilter = None,
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Raw readings across devices, newest first."""
    window = time_range("ts", start, end)
    return await _readings(db, caller, limit, cursor, device_id=device_id, tag=tag, window=window)


@router.get("/devices/{device_id}/telemetry", response_model=ReadingsPage, responses=BAD_PARAMETER)
async def device_telemetry(
    db: Db,
    caller: Reader,
    limit: Limit,
    device_id: DevicePath,
    cursor: Cursor = None,
    tag: TagFilter = None,
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """One device's raw readings, newest first: /telemetry for one device."""
    return await list_telemetry(db, caller, limit, cursor, device_id, tag, start, end)


@router.get("/v1/search", response_model=ReadingsPage, responses=BAD_PARAMETER, tags=["v1"])
async def search_by_tag(
    db: Db,
    caller: Reader,
    limit: Limit,
    tag: Annotated[
        str,
        Query(min_length=1, max_length=128, description="an exact tag", examples=["room:101"]),
    ],
    cursor: Cursor = None,
    from_time: FromTime = None,
    to_time: ToTime = None,
) -> dict[str, Any]:
    """Readings carrying ``tag``, newest first (served by the (project_id, tags, ts) index)."""
    window = time_range("ts", from_time, to_time, names=V1_RANGE)
    return await _readings(db, caller, limit, cursor, tag=tag, window=window)


@router.get(
    "/v1/devices/{device_id}/events",
    response_model=ReadingsPage,
    responses=BAD_PARAMETER,
    tags=["v1"],
)
async def device_events(
    db: Db,
    caller: Reader,
    limit: Limit,
    device_id: DevicePath,
    cursor: Cursor = None,
    from_time: FromTime = None,
    to_time: ToTime = None,
) -> dict[str, Any]:
    """One device's recent readings, newest first (served by the (project_id, device_id, ts)
    index)."""
    window = time_range("ts", from_time, to_time, names=V1_RANGE)
    return await _readings(db, caller, limit, cursor, device_id=device_id, window=window)
