"""Organizations and projects: the installation's tenants, managed with the admin key.

An organization (a customer, a site operator) holds projects; a project will
hold its devices, readings, rollups, alerts, rules, webhooks and keys. The
default organization and its default project always exist: an installation
that never creates a tenant keeps everything there.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field, field_validator
from pymongo import ReturnDocument
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.http.api_keys import (
    API_KEYS,
    INGEST,
    ApiKey,
    Scope,
    issue_key,
)
from telemetry_common.infra.tenancy import (
    NAME_MAX,
    ORGANIZATIONS,
    PROJECTS,
    in_project,
    new_org_id,
    new_project_id,
)

from dashboard_api.auth import ADMIN_ERRORS, Admin, ProjectId, ProjectManager, require_project
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import (
    IssuedKeyOut,
    KeysPage,
    OrgOut,
    OrgsPage,
    ProjectOut,
    ProjectsPage,
)
from dashboard_api.serialize import as_served

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


class Quota(BaseModel):
    readings_per_s: float | None = Field(
        None,
        gt=0,
        le=10_000_000,
        description="readings a second the project may post (each ingestion replica counts "
        "its own); over it the ingestion API answers 429 with Retry-After. None: no limit",
        examples=[500.0],
    )
    devices: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="devices the project may have; a reading from one more device is "
        "refused with 429 (each ingestion replica may let a few in before it sees the "
        "others'). None: no limit",
        examples=[1000],
    )


class ProjectCreate(_Named):
    name: str = Field(min_length=1, max_length=NAME_MAX, examples=["Warehouse sensors"])
    quota: Quota = Field(default_factory=Quota)


class ProjectChange(BaseModel):
    quota: Quota = Field(
        description="replaces the project's quota",
        examples=[{"readings_per_s": 500.0, "devices": 1000}],
    )


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
    return as_served(doc, "org_id")


@router.get("/orgs", response_model=OrgsPage, responses={**BAD_PARAMETER, **ADMIN_ERRORS})
async def list_orgs(db: Db, _admin: Admin, limit: Limit, cursor: Cursor = None) -> dict[str, Any]:
    """Organizations, oldest first (the default one first of all)."""
    docs, next_cursor = await keyset_page(
        db[ORGANIZATIONS], {}, sort_key="created_at", limit=limit, cursor=cursor, descending=False
    )
    return page([as_served(doc, "org_id") for doc in docs], next_cursor)


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
        "quota": project.quota.model_dump(),
        "created_at": utcnow(),
        "created_by": admin,
    }
    await db[PROJECTS].insert_one(doc)
    return as_served(doc, "project_id")


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
    return page([as_served(doc, "project_id") for doc in docs], next_cursor)


NO_PROJECT: dict[int | str, dict[str, Any]] = {
    404: {"description": "no project has this id", "model": ErrorOut}
}


@router.get(
    "/projects/{project_id}",
    response_model=ProjectOut,
    responses={**NO_PROJECT, **BAD_PARAMETER, **ADMIN_ERRORS},
)
async def get_project(db: Db, _admin: Admin, project_id: ProjectId) -> dict[str, Any]:
    """One project, with its quota."""
    doc = await db[PROJECTS].find_one({"_id": project_id})
    if doc is None:
        raise ApiError(404, "project_id", "no such project")
    return as_served(doc, "project_id")


@router.patch(
    "/projects/{project_id}",
    response_model=ProjectOut,
    responses={**NO_PROJECT, **BAD_PARAMETER, **ADMIN_ERRORS},
)
async def change_project(
    db: Db, _admin: Admin, project_id: ProjectId, change: ProjectChange
) -> dict[str, Any]:
    """Change a project's quota; every ingestion replica applies it within API_KEYS_REFRESH_S."""
    doc = await db[PROJECTS].find_one_and_update(
        {"_id": project_id},
        {"$set": {"quota": change.quota.model_dump()}},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        raise ApiError(404, "project_id", "no such project")
    return as_served(doc, "project_id")


KEY_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "X-API-Key is missing or not valid", "model": ErrorOut},
    403: {"description": "neither the admin key nor this project's manage key", "model": ErrorOut},
    404: {"description": "no project (or no key in it) has this id", "model": ErrorOut},
}


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=NAME_MAX, examples=["greenhouse 7"])
    scopes: list[Scope] = Field(
        min_length=1,
        description="ingest: post readings; read: read the project's data; manage: change "
        "its rules, silences, webhooks and acknowledgements",
        examples=[["ingest"]],
    )
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] | None = Field(
        None,
        max_length=10_000,
        description="an ingest key bound to these devices may post only their readings",
        examples=[["dev-1", "dev-2"]],
    )


def _key_out(key: ApiKey) -> dict[str, Any]:
    return as_served(key.shown_fields())


@router.post(
    "/projects/{project_id}/api-keys",
    status_code=201,
    response_model=IssuedKeyOut,
    responses={**KEY_ERRORS, **BAD_PARAMETER},
)
async def create_key(
    db: Db, _manager: ProjectManager, project_id: ProjectId, body: KeyCreate
) -> dict[str, Any]:
    """Issue a key of the project. The answer carries the key itself, this once: only
    its hash is stored."""
    await require_project(db, project_id)
    if body.devices is not None and set(body.scopes) != {INGEST}:
        raise ApiError(422, "devices", "only a key whose only scope is ingest is bound to devices")
    key, record = await issue_key(
        db, body.name, body.devices, project_id=project_id, scopes=body.scopes
    )
    return {**_key_out(record), "key": key}


@router.get(
    "/projects/{project_id}/api-keys",
    response_model=KeysPage,
    responses={**KEY_ERRORS, **BAD_PARAMETER},
)
async def list_project_keys(
    db: Db, _manager: ProjectManager, project_id: ProjectId, limit: Limit, cursor: Cursor = None
) -> dict[str, Any]:
    """The project's keys, oldest first, revoked ones included (never the key itself)."""
    await require_project(db, project_id)
    docs, next_cursor = await keyset_page(
        db[API_KEYS],
        in_project(project_id),
        sort_key="created_at",
        limit=limit,
        cursor=cursor,
        descending=False,
    )
    return page([_key_out(ApiKey.from_document(doc)) for doc in docs], next_cursor)


@router.delete(
    "/projects/{project_id}/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses=KEY_ERRORS,
)
async def revoke_project_key(
    db: Db,
    _manager: ProjectManager,
    project_id: ProjectId,
    key_id: Annotated[str, Path(max_length=64, examples=["3f9c2a1b7d4e"])],
) -> Response:
    """Revoke a key: every replica refuses it within API_KEYS_REFRESH_S."""
    result = await db[API_KEYS].update_one(
        {"_id": key_id, **in_project(project_id), "revoked_at": None},
        {"$set": {"revoked_at": utcnow()}},
    )
    if result.matched_count == 0 and not await db[API_KEYS].count_documents(
        {"_id": key_id, **in_project(project_id)}
    ):
        raise ApiError(404, "key_id", "no such key in this project")
    return Response(status_code=204)
