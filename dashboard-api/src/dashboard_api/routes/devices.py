"""Devices, from the summaries the aggregator keeps (never a scan of raw readings)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path, Query
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.domain.rollup_layout import scoped_id
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import ALERTS, DEVICES, Database

from dashboard_api.auth import Reader, read_router
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, TagFilter, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import DeviceOut, DevicesPage
from dashboard_api.serialize import as_served

router = read_router(tags=["devices"])

IdPrefix = Annotated[
    str | None,
    Query(
        pattern=DEVICE_ID_PATTERN,
        description="only devices whose id starts with this (the dashboard's search box)",
        examples=["dev-1"],
    ),
]
# Above every character a device id may hold (all ASCII): the end of a prefix's range.
_AFTER_ID_CHARS = "\x7f"
# What an absent rule on any reading raises (alert_rules.Rule.alert_type_of): while one
# is active, its device is offline.
OFFLINE_ALERT = "device_offline"
StatusFilter = Annotated[
    Literal["online", "offline"] | None,
    Query(
        description="`offline`: devices an absent rule on any reading holds silent now "
        "(an active `device_offline` alert); `online`: the others",
        examples=["offline"],
    ),
]


async def open_alerts_by_device(
    db: Database, project_id: str, device_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Active alerts per device (``open``) and since when it has been offline
    (``offline_since``, None if online), for one page of devices, in one aggregation.

    Counted at read time rather than kept on the device document: an ``$inc`` by
    the alerts worker would count twice when a batch is replayed after a crash,
    and a resolved or acknowledged alert would need a matching decrement. A page
    is bounded (MAX_PAGE_SIZE devices), and the alerts' (device_id, created_at)
    index narrows the match to those devices.
    """
    if not device_ids:
        return {}
    pipeline = [
        {
            "$match": {
                "project_id": project_id,
                "device_id": {"$in": device_ids},
                "status": "active",
            }
        },
        {
            "$group": {
                "_id": "$device_id",
                "open": {"$sum": 1},
                # Null for other alerts, which $min passes over.
                "offline_since": {
                    "$min": {"$cond": [{"$eq": ["$alert_type", OFFLINE_ALERT]}, "$timestamp", None]}
                },
            }
        },
    ]
    return {row["_id"]: row async for row in await db[ALERTS].aggregate(pipeline)}


async def _with_open_alerts(
    db: Database, project_id: str, docs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    # A device's _id is its id only in the default project; its device_id field is
    # its id everywhere (and as_served() falls back on _id for a summary without one).
    devices = [as_served(doc, "device_id") for doc in docs]
    found = await open_alerts_by_device(db, project_id, [device["device_id"] for device in devices])
    served = []
    for device in devices:
        row: dict[str, Any] = found.get(device["device_id"], {})
        since = row.get("offline_since")
        served.append(
            {
                **device,
                "open_alerts": row.get("open", 0),
                "status": "online" if since is None else "offline",
                "offline_since": None if since is None else iso_z(since),
            }
        )
    return served


async def offline_devices(db: Database, project_id: str) -> list[str]:
    """The project's devices an active device_offline alert holds silent."""
    query = {"project_id": project_id, "status": "active", "alert_type": OFFLINE_ALERT}
    return sorted(await db[ALERTS].distinct("device_id", query))


@router.get("/devices", response_model=DevicesPage, responses=BAD_PARAMETER)
async def list_devices(
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    tag: TagFilter = None,
    id_prefix: IdPrefix = None,
    status: StatusFilter = None,
) -> dict[str, Any]:
    """Devices with first/last seen, reading count, last values, open alerts and whether
    they are online, by device id.

    Ordered by device id, which never changes: ordered by last seen, a device
    reporting while a client pages would move between pages, seen twice or never.
    """
    project_id = caller.project_id
    query: dict[str, Any] = {"project_id": project_id}
    if tag:
        query["tags"] = tag
    if id_prefix:
        # A range on _id rather than a regex: the (project_id, _id) index serves it,
        # paged like the rest.
        low = scoped_id(project_id, id_prefix)
        query["_id"] = {"$gte": low, "$lt": low + _AFTER_ID_CHARS}
    if status is not None:
        offline = [scoped_id(project_id, d) for d in await offline_devices(db, project_id)]
        among = {"_id": {"$in" if status == "offline" else "$nin": offline}}
        query = {"$and": [query, among]}
    docs, next_cursor = await keyset_page(
        db[DEVICES], query, sort_key="_id", limit=limit, cursor=cursor, descending=False
    )
    return page(await _with_open_alerts(db, project_id, docs), next_cursor)


@router.get(
    "/devices/{device_id}",
    response_model=DeviceOut,
    responses={
        404: {"description": "No reading from this device yet", "model": ErrorOut},
        **BAD_PARAMETER,
    },
)
async def get_device(
    db: Db, caller: Reader, device_id: str = Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])
) -> dict[str, Any]:
    """One device's summary, with its open (active) alerts."""
    doc = await db[DEVICES].find_one({"_id": scoped_id(caller.project_id, device_id)})
    if doc is None:
        raise ApiError(404, "device_id", f"no readings from {device_id!r} yet")
    [device] = await _with_open_alerts(db, caller.project_id, [doc])
    return device
