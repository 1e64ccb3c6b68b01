"""Silences: for a while, a rule's or a device's alerts are recorded but not announced.

A silenced transition is still an alert document (``silenced: true``, listed by
GET /alerts), but it is not published to alerts.triggered: no SSE event, no
webhook. An alert that fired silenced also resolves silently. The alerts worker
picks a new or deleted silence up within RULES_REFRESH_S.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.domain.timefmt import to_utc_ms, utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import ALERT_SILENCES

from dashboard_api.auth import WRITE_ERRORS, Reader, Writer, read_router
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import SilenceOut, SilencesPage
from dashboard_api.serialize import as_served

router = APIRouter(tags=["alerts"])
# What a read key may see; the writes below need a manage key.
reads = read_router(tags=["alerts"])


class SilenceCreate(BaseModel):
    """A rule, a device or both (the rule on that device), silenced until a time."""

    rule_id: str | None = Field(None, max_length=64, examples=["r-4f1c2a9b03de"])
    device_id: str | None = Field(None, pattern=DEVICE_ID_PATTERN, examples=["dev-1"])
    until: datetime = Field(
        description="ISO 8601 (UTC if no offset); must be in the future",
        examples=["2025-01-15T12:00:00Z"],
    )
    comment: str | None = Field(None, max_length=500, examples=["maintenance window"])


@router.post(
    "/alerts/silences",
    status_code=201,
    response_model=SilenceOut,
    responses={
        422: {
            "description": "neither rule_id nor device_id, or `until` already past",
            "model": ErrorOut,
        },
        **WRITE_ERRORS,
    },
)
async def create_silence(db: Db, writer: Writer, silence: SilenceCreate) -> dict[str, Any]:
    """Silence a rule and/or a device until a time."""
    if silence.rule_id is None and silence.device_id is None:
        raise ApiError(422, "rule_id", "give rule_id, device_id or both")
    now = utcnow()
    until = to_utc_ms(silence.until)
    if until <= now:
        raise ApiError(422, "until", "must be in the future")
    doc = {
        "_id": f"s-{secrets.token_hex(6)}",
        "project_id": writer.project_id,
        **silence.model_dump(),
        "until": until,
        "created_at": now,
        "created_by": writer.name,
    }
    await db[ALERT_SILENCES].insert_one(doc)
    return as_served(doc, "silence_id")


@reads.get("/alerts/silences", response_model=SilencesPage, responses=BAD_PARAMETER)
async def list_silences(
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    expired: Annotated[
        bool, Query(description="include silences already over", examples=[False])
    ] = False,
) -> dict[str, Any]:
    """Silences, newest first; by default only those still in force."""
    query: dict[str, Any] = {"project_id": caller.project_id}
    if not expired:
        query["until"] = {"$gt": utcnow()}
    docs, next_cursor = await keyset_page(
        db[ALERT_SILENCES], query, sort_key="created_at", limit=limit, cursor=cursor
    )
    return page([as_served(doc, "silence_id") for doc in docs], next_cursor)


@router.delete(
    "/alerts/silences/{silence_id}",
    status_code=204,
    response_class=Response,
    responses={**WRITE_ERRORS, 404: {"description": "no silence has this id", "model": ErrorOut}},
)
async def delete_silence(
    db: Db,
    writer: Writer,
    silence_id: Annotated[str, Path(max_length=64, examples=["s-9a0b1c2d3e4f"])],
) -> Response:
    """End a silence now."""
    result = await db[ALERT_SILENCES].delete_one(
        {"_id": silence_id, "project_id": writer.project_id}
    )
    if result.deleted_count == 0:
        raise ApiError(404, "silence_id", "no such silence")
    return Response(status_code=204)
