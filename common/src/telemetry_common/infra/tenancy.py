"""Organizations and their projects: who owns devices, readings, rollups and alerts.

Every project belongs to one organization. Keys, readings, rollups, devices,
alerts, rules, silences and webhooks each belong to one project. The default
project of the default organization always exists and is everything's when keys
are off, so an installation without tenants (local `make up`) works unchanged.
Project ids go into rollup document ids (``project|device|...``), so they never
contain ``|``.
"""

from __future__ import annotations

import secrets

from pymongo import ASCENDING, IndexModel

from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.mongo import DEVICES, Database
from telemetry_common.infra.reloading import Reloading

ORGANIZATIONS = "organizations"
PROJECTS = "projects"
DEFAULT_ORG = "default"
NAME_MAX = 100


def new_org_id() -> str:
    return f"org-{secrets.token_hex(6)}"


def new_project_id() -> str:
    return f"prj-{secrets.token_hex(6)}"


async def ensure_tenancy(db: Database) -> None:
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


class ProjectQuotas(Reloading):
    """Each project's quotas (``quota`` on its document; a missing figure: no limit),
    reloaded every ``refresh_s`` seconds like the keys: readings a second, and
    devices, with the ids of the devices the project has (for projects with a
    device quota only), so that only a new device counts against it."""

    what = "project quotas"

    def __init__(self, db: Database, refresh_s: float):
        super().__init__(refresh_s)
        self._db = db
        self.readings_per_s: dict[str, float] = {}
        self.devices: dict[str, int] = {}
        # Stored devices, and those this process let in since (not folded yet).
        self._known: dict[str, set[str]] = {}

    async def reload(self) -> None:
        readings_per_s, devices = {}, {}
        async for doc in self._db[PROJECTS].find(
            {"$or": [{"quota.readings_per_s": {"$gt": 0}}, {"quota.devices": {"$gt": 0}}]},
            {"quota": 1},
        ):
            quota = doc["quota"]
            if quota.get("readings_per_s"):
                readings_per_s[doc["_id"]] = float(quota["readings_per_s"])
            if quota.get("devices"):
                devices[doc["_id"]] = int(quota["devices"])
        known = {}
        for project_id in devices:
            stored = {
                doc["device_id"]
                async for doc in self._db[DEVICES].find(
                    in_project(project_id), {"device_id": 1, "_id": 0}
                )
            }
            known[project_id] = stored | self._known.get(project_id, set())
        self.readings_per_s, self.devices, self._known = readings_per_s, devices, known

    def new_devices_over_quota(self, project_id: str, device_ids: list[str]) -> list[str]:
        """The devices new to the project that its device quota leaves no room for; all of
        the request's new devices or none (when there is room, they now count)."""
        limit = self.devices.get(project_id)
        if limit is None:
            return []
        known = self._known.setdefault(project_id, set())
        new = [d for d in dict.fromkeys(device_ids) if d not in known]
        if len(known) + len(new) > limit:
            return new
        known.update(new)
        return []


def in_project(project_id: str) -> dict[str, str]:
    """The filter of a project's documents (those stored before projects are given
    the default project's id by ``telemetry-migrate``)."""
    return {"project_id": project_id}
