"""Figures of the installation or of one project, answered from a snapshot so they cost
nothing however large the data."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from telemetry_common.http.api_errors import ErrorOut

from dashboard_api.auth import Reader, read_router
from dashboard_api.schemas import StatsOut
from dashboard_api.system_stats import StatsSnapshot

router = read_router(tags=["stats"])


@router.get(
    "/stats",
    response_model=StatsOut,
    responses={
        503: {
            "description": "no figures gathered yet (MongoDB down since start)",
            "model": ErrorOut,
        }
    },
)
async def stats(request: Request, caller: Reader) -> dict[str, Any]:
    """Collection sizes, active alerts, ingest rate, consumer lag and DLQ size, as of `as_of`.

    The installation's figures for the admin key (or anyone, with keys off) naming no
    `project_id`; a project's own for its keys or when named, without the Kafka
    figures (those are the installation's). Gathered every STATS_REFRESH_S seconds
    in the background (see system_stats.py).
    """
    snapshot: StatsSnapshot = request.app.state.stats
    if caller.key is None and "project_id" not in request.query_params:
        return await snapshot.current()
    return await snapshot.for_project(caller.project_id)
