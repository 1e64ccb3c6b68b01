"""System-wide figures, answered from a snapshot so they cost nothing however large the data."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from telemetry_common.api_errors import ErrorOut

from dashboard_api.auth import read_router
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
async def stats(request: Request) -> dict[str, Any]:
    """Collection sizes, active alerts, ingest rate, consumer lag and DLQ size, as of `as_of`.

    Gathered every STATS_REFRESH_S seconds in the background (see system_stats.py).
    """
    snapshot: StatsSnapshot = request.app.state.stats
    return await snapshot.current()
