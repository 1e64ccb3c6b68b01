"""System-wide figures that answer fast however large the collections are."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from telemetry_common.mongo import ALERTS, DEVICES, RAW, ROLLUPS
from telemetry_common.timefmt import iso_z, utcnow

from dashboard_api.deps import Db
from dashboard_api.schemas import StatsOut

router = APIRouter(tags=["stats"])

# Collection sizes come from metadata; active alerts have none, so they are
# counted on the (status, created_at, _id) index, stopping at this many keys: a
# fleet in an alert storm costs a bounded scan, and the answer says "at least".
ACTIVE_ALERTS_CAP = 10_000


@router.get("/stats", response_model=StatsOut)
async def stats(db: Db) -> dict[str, Any]:
    """Collection sizes (from metadata, not full counts) and active alerts (bounded)."""
    active = await db[ALERTS].count_documents({"status": "active"}, limit=ACTIVE_ALERTS_CAP)
    return {
        "total_readings": await db[RAW].estimated_document_count(),
        "total_aggregates": await db[ROLLUPS].estimated_document_count(),
        "total_alerts": await db[ALERTS].estimated_document_count(),
        "total_devices": await db[DEVICES].estimated_document_count(),
        "active_alerts": active,
        "active_alerts_capped": active >= ACTIVE_ALERTS_CAP,
        "generated_at": iso_z(utcnow()),
    }
