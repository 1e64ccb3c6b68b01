"""Devices, from the summaries the aggregator keeps (never a scan of raw readings)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from telemetry_common.api_errors import ApiError
from telemetry_common.mongo import DEVICES

from dashboard_api.deps import DEVICE_ID_PATTERN, Db, Limit, page
from dashboard_api.schemas import DeviceOut, DevicesPage
from dashboard_api.serialize import public

router = APIRouter(tags=["devices"])


@router.get("/devices", response_model=DevicesPage)
async def list_devices(db: Db, limit: Limit) -> dict[str, Any]:
    """Devices with first/last seen, reading count and last values, most recently seen first."""
    cursor = db[DEVICES].find({}).sort("last_seen", -1).limit(limit)
    return page([public(doc, "device_id") async for doc in cursor])


@router.get(
    "/devices/{device_id}",
    response_model=DeviceOut,
    responses={404: {"description": "No reading from this device yet"}},
)
async def get_device(
    db: Db, device_id: str = Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])
) -> dict[str, Any]:
    """One device's summary."""
    doc = await db[DEVICES].find_one({"_id": device_id})
    if doc is None:
        raise ApiError(404, "device_id", f"no readings from {device_id!r} yet")
    return public(doc, "device_id")
