"""Alerts, newest first, and acknowledging one."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import ALERTS

from dashboard_api.auth import WRITE_ERRORS, Reader, Writer, read_router
from dashboard_api.deps import BAD_PARAMETER, Db, DeviceFilter, From, Limit, To, page, time_range
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import AlertOut, AlertsPage
from dashboard_api.serialize import as_served

router = APIRouter(tags=["alerts"])
# What a read key may see; the writes below need a manage key.
reads = read_router(tags=["alerts"])

Severity = Annotated[
    Literal["info", "warning", "critical"] | None,
    Query(description="only this severity", examples=["critical"]),
]
Status = Annotated[
    Literal["active", "resolved", "acknowledged", "unacknowledged"] | None,
    Query(
        description="only active or resolved alerts, or those acknowledged (or not) by a person",
        examples=["active"],
    ),
]
RuleFilter = Annotated[
    str | None, Query(max_length=64, description="only this rule's", examples=["temperature_high"])
]
STATUS_QUERIES: dict[str, dict[str, Any]] = {
    "active": {"status": "active"},
    "resolved": {"status": "resolved"},
    "acknowledged": {"acknowledged_at": {"$ne": None}},
    "unacknowledged": {"acknowledged_at": None},
}


@reads.get("/alerts", response_model=AlertsPage, responses=BAD_PARAMETER)
async def list_alerts(
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    device_id: DeviceFilter = None,
    severity: Severity = None,
    status: Status = None,
    rule_id: RuleFilter = None,
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Alerts, newest first, filtered by device, severity, status, rule and creation time.

    Resolved alerts stay: this is the history too.
    """
    query: dict[str, Any] = {
        "project_id": caller.project_id,
        **time_range("created_at", start, end),
    }
    if device_id:
        query["device_id"] = device_id
    if severity:
        query["severity"] = severity
    if status:
        query.update(STATUS_QUERIES[status])
    if rule_id:
        query["rule_id"] = rule_id
    docs, next_cursor = await keyset_page(
        db[ALERTS], query, sort_key="created_at", limit=limit, cursor=cursor
    )
    return page([as_served(doc) for doc in docs], next_cursor)


@reads.get("/alerts/recent", response_model=AlertsPage)
async def recent_alerts(
    db: Db,
    caller: Reader,
    limit: Annotated[
        int, Query(ge=1, le=1000, description="at most this many", examples=[20])
    ] = 20,
) -> dict[str, Any]:
    """The most recent alerts across all devices."""
    cursor = (
        db[ALERTS]
        .find({"project_id": caller.project_id})
        .sort([("created_at", -1), ("_id", -1)])
        .limit(limit)
    )
    return page([as_served(doc) async for doc in cursor])


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertOut,
    responses={**WRITE_ERRORS, 404: {"description": "no alert has this id", "model": ErrorOut}},
)
async def acknowledge_alert(
    db: Db,
    writer: Writer,
    alert_id: Annotated[str, Path(max_length=300, examples=["e001:temperature_high"])],
) -> dict[str, Any]:
    """Acknowledge an alert: someone is on it. The first acknowledgement is kept."""
    mine = {"_id": alert_id, "project_id": writer.project_id}
    doc = await db[ALERTS].find_one_and_update(
        {**mine, "acknowledged_at": None},
        {"$set": {"acknowledged_at": utcnow(), "acknowledged_by": writer.name}},
        return_document=True,
    )
    if doc is None:
        doc = await db[ALERTS].find_one(mine)
    if doc is None:
        raise ApiError(404, "alert_id", "no such alert")
    return as_served(doc)
