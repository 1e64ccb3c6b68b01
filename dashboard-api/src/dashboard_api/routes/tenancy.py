"""Organizations and projects: the installation's tenants, managed with the admin key.

An organization (a customer, a site operator) holds projects; a project will
hold its devices, readings, rollups, alerts, rules, webhooks and keys. The
default organization and its default project always exist: an installation
that never creates a tenant keeps everything there.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field, field_validator
from telemetry_common.api_errors import ApiError, ErrorOut
from telemetry_common.tenancy import (
    NAME_MAX,
    ORGANIZATIONS,
    PROJECTS,
    new_org_id,
    new_project_id,
)
from telemetry_common.timefmt import utcnow

from dashboard_api.auth import ADMIN_ERRORS, Admin
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import OrgOut, OrgsPage, ProjectOut, ProjectsPage
from dashboard_api.serialize import public

router = APIRouter(tags=["tenancy"])

OrgId = Annotated[
    str, Path(min_length=1, max_length=64, description="an organization's id", examples=["default"])
]
NO_ORG: dict[int | str, dict[str, Any]] = {
    404: {"description": "no organization has this id", "model": ErrorOut}
}


class _Named(BaseModel):
    name: str = Field(min_length=1, max_length=NAME_MAX)

    @field_validator("name")
    @classmethod
    def not_blank(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must not be blank")
        return name.strip()


class OrgCreate(_Named):
    name: str = Field(min_length=1, max_length=NAME_MAX, examples=["Acme Facilities"])


class ProjectCreate(_Named):
    name: str = Field(min_length=1, max_length=NAME_MAX, examples=["Warehouse sensors"])


@router.post(
    "/orgs",
    status_code=201,
    response_model=OrgOut,
    responses={**BAD_PARAMETER, **ADMIN_ERRORS},
)
async def create_org(db: Db, admin: Admin, org: OrgCreate) -> dict[str, Any]:
    """Create an organization."""
    doc = {"_id": new_org_id(), "name": org.name, "created_at": utcnow(), "created_by": admin}
    await db[ORGANIZATIONS].insert_one(doc)
    return public(doc, "org_id")


@router.get("/orgs", response_model=OrgsPage, responses={**BAD_PARAMETER, **ADMIN_ERRORS})
async def list_orgs(db: Db, _admin: Admin, limit: Limit, cursor: Cursor = None) -> dict[str, Any]:
    """Organizations, oldest first (the default one first of all)."""
    docs, next_cursor = await keyset_page(
        db[ORGANIZATIONS], {}, sort_key="created_at", limit=limit, cursor=cursor, descending=False
    )
    return page([public(doc, "org_id") for doc in docs], next_cursor)


async def _existing_org(db: Db, org_id: str) -> None:
    if await db[ORGANIZATIONS].find_one({"_id": org_id}, {"_id": 1}) is None:
        raise ApiError(404, "org_id", "no such organization")


@router.post(
    "/orgs/{org_id}/projects",
    status_code=201,
    response_model=ProjectOut,
    responses={**NO_ORG, **BAD_PARAMETER, **ADMIN_ERRORS},
)
async def create_project(
    db: Db, admin: Admin, org_id: OrgId, project: ProjectCreate
) -> dict[str, Any]:
    """Create a project in an organization."""
    await _existing_org(db, org_id)
    doc = {
        "_id": new_project_id(),
        "org_id": org_id,
        "name": project.name,
        "created_at": utcnow(),
        "created_by": admin,
    }
    await db[PROJECTS].insert_one(doc)
    return public(doc, "project_id")


@router.get(
    "/orgs/{org_id}/projects",
    response_model=ProjectsPage,
    responses={**NO_ORG, **BAD_PARAMETER, **ADMIN_ERRORS},
)
async def list_projects(
    db: Db, _admin: Admin, org_id: OrgId, limit: Limit, cursor: Cursor = None
) -> dict[str, Any]:
    """An organization's projects, oldest first."""
    await _existing_org(db, org_id)
    docs, next_cursor = await keyset_page(
        db[PROJECTS],
        {"org_id": org_id},
        sort_key="created_at",
        limit=limit,
        cursor=cursor,
        descending=False,
    )
    return page([public(doc, "project_id") for doc in docs], next_cursor)
