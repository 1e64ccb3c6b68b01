"""System-wide figures that answer fast however large the collections are."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from telemetry_common.mongo import ALERTS, DEVICES, RAW, ROLLUPS
from telemetry_common.timefmt import iso_z, utcnow

from dashboard_api.deps import Db
from dashboard_api.schemas import StatsOut

router = APIRouter(tags=["stats"])


@router.get("/stats", response_model=StatsOut)
async def stats(db: Db) -> dict[str, Any]:
    """Collection sizes (from metadata, not full counts) and active alerts."""
    return {
        "total_readings": await db[RAW].estimated_document_count(),
        "total_aggregates": await db[ROLLUPS].estimated_document_count(),
        "total_alerts": await db[ALERTS].estimated_document_count(),
        "total_devices": await db[DEVICES].estimated_document_count(),
        # Bounded: the status index answers this without reading every alert.
        "active_alerts": await db[ALERTS].count_documents({"status": "active"}, limit=100_000),
        "generated_at": iso_z(utcnow()),
    }
