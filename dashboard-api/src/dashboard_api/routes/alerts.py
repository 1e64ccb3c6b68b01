"""Alerts, newest first."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from telemetry_common.mongo import ALERTS

from dashboard_api.deps import BAD_PARAMETER, Db, DeviceFilter, From, Limit, To, page, time_range
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import AlertsPage
from dashboard_api.serialize import public

router = APIRouter(tags=["alerts"])

Severity = Annotated[
    Literal["warning", "critical"] | None,
    Query(description="only this severity", examples=["critical"]),
]
Status = Annotated[
    Literal["active", "resolved", "acknowledged"] | None,
    Query(description="only this status", examples=["active"]),
]


@router.get("/alerts", response_model=AlertsPage, responses=BAD_PARAMETER)
async def list_alerts(
    db: Db,
    limit: Limit,
    cursor: Cursor = None,
    device_id: DeviceFilter = None,
    severity: Severity = None,
    status: Status = None,
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Alerts, newest first, filtered by device, severity, status and creation time."""
    query: dict[str, Any] = {**time_range("created_at", start, end)}
    if device_id:
        query["device_id"] = device_id
    if severity:
        query["severity"] = severity
    if status:
        query["status"] = status
    docs, next_cursor = await keyset_page(
        db[ALERTS], query, sort_key="created_at", limit=limit, cursor=cursor
    )
    return page([public(doc) for doc in docs], next_cursor)


@router.get("/alerts/recent", response_model=AlertsPage)
async def recent_alerts(
    db: Db,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="at most this many", examples=[20])
    ] = 20,
) -> dict[str, Any]:
    """The most recent alerts across all devices."""
    cursor = db[ALERTS].find({}).sort("created_at", -1).limit(limit)
    return page([public(doc) async for doc in cursor])
