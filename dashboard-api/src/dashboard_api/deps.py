"""Shared query parameters and the database handle, as Annotated dependencies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from telemetry_common.domain.timefmt import to_utc_ms
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import Database


# Dependencies are async on purpose: FastAPI runs a plain `def` dependency in a
# thread pool, a thread hand-off per request that cost more than the query.
async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


Db = Annotated[Database, Depends(get_db)]

DeviceFilter = Annotated[
    str | None, Query(pattern=DEVICE_ID_PATTERN, description="only this device", examples=["dev-1"])
]
MetricFilter = Annotated[
    str | None,
    Query(
        pattern=METRIC_NAME_PATTERN,
        description="only this metric (sensor_type)",
        examples=["temperature_c"],
    ),
]
TagFilter = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=128,
        description="only readings carrying this tag (an exact match)",
        examples=["room:101"],
    ),
]
From = Annotated[
    datetime | None,
    Query(
        alias="from",
        description="inclusive start, ISO 8601 (UTC if no offset)",
        examples=["2025-01-15T00:00:00Z"],
    ),
]
To = Annotated[
    datetime | None,
    Query(
        alias="to",
        description="exclusive end, ISO 8601 (UTC if no offset)",
        examples=["2025-01-16T00:00:00Z"],
    ),
]


BAD_PARAMETER: dict[int | str, dict[str, Any]] = {
    422: {"description": "a parameter is bad; `errors` names it and why", "model": ErrorOut}
}

DEFAULT_LIMIT = 100


async def limit_param(
    request: Request,
    limit: int | None = Query(
        None,
        ge=1,
        description="at most this many items (default 100, at most MAX_PAGE_SIZE)",
        examples=[100],
    ),
) -> int:
    maximum: int = request.app.state.settings.max_page_size
    if limit is None:
        return min(DEFAULT_LIMIT, maximum)
    if limit > maximum:
        raise ApiError(422, "limit", f"must be at most {maximum}")
    return limit


Limit = Annotated[int, Depends(limit_param)]


def time_range(
    field: str,
    start: datetime | None,
    end: datetime | None,
    names: tuple[str, str] = ("from", "to"),
) -> dict[str, Any]:
    """A MongoDB range filter on ``field``; refuses an empty or inverted range.

    ``names`` are the two parameters as the endpoint spells them, for the 422.
    """
    condition: dict[str, Any] = {}
    if start is not None:
        condition["$gte"] = to_utc_ms(start)
    if end is not None:
        condition["$lt"] = to_utc_ms(end)
    if start is not None and end is not None and condition["$gte"] >= condition["$lt"]:
        raise ApiError(422, names[0], f"must be before '{names[1]}'")
    return {field: condition} if condition else {}


def page(items: list[dict[str, Any]], next_cursor: str | None = None) -> dict[str, Any]:
    return {"data": items, "count": len(items), "next_cursor": next_cursor}
