"""Organizations and their projects: who owns devices, readings, rollups and alerts.

Every project belongs to one organization. Until projects scope the data (keys,
readings, rollups, alerts), everything belongs to the default project of the
default organization, which always exists, so an installation without tenants
(local `make up`) works unchanged. Project ids go into rollup document ids
(``project|device|...``), so they never contain ``|``.
"""

from __future__ import annotations

import secrets

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from telemetry_common.rollup_layout import DEFAULT_PROJECT
from telemetry_common.timefmt import utcnow

ORGANIZATIONS = "organizations"
PROJECTS = "projects"
DEFAULT_ORG = "default"
NAME_MAX = 100


def new_org_id() -> str:
    return f"org-{secrets.token_hex(6)}"


def new_project_id() -> str:
    return f"prj-{secrets.token_hex(6)}"


async def ensure_tenancy(db: AsyncDatabase) -> None:
    """The indexes, and the default organization and project (idempotent)."""
    await db[PROJECTS].create_indexes(
        [IndexModel([("org_id", ASCENDING), ("created_at", ASCENDING)], name="org_created_at")]
    )
    now = utcnow()
    await db[ORGANIZATIONS].update_one(
        {"_id": DEFAULT_ORG},
        {"$setOnInsert": {"name": "Default organization", "created_at": now}},
        upsert=True,
    )
    await db[PROJECTS].update_one(
        {"_id": DEFAULT_PROJECT},
        {
            "$setOnInsert": {
                "org_id": DEFAULT_ORG,
                "name": "Default project",
                "created_at": now,
            }
        },
        upsert=True,
    )
