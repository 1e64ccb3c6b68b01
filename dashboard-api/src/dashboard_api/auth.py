"""Who may call the dashboard API, and what their key lets them do.

With API_KEYS_REQUIRED (as in docker-compose and Kubernetes) every route but
/health, /metrics, the banner and the web dashboard's files needs X-API-Key:

- reads need a key with ``read``;
- rules, silences, webhooks and acknowledgements need ``manage``;
- organizations and projects need the admin key;
- a project's keys need the admin key or that project's ``manage`` key.

A key bound to devices only posts readings (a stolen device must not read the
fleet nor edit its rules). Without API_KEYS_REQUIRED (local ``make up``) every
caller may do everything, as the admin key does.

Every read and write works in one project: a project's key in its own (naming
another is refused), the admin key (or anyone, with keys off) in the one its
``project_id`` parameter names, the default project when it names none. Queries
filter on that project, so another project's objects answer 404 and lists leave
them out.

Live streams also take ``?token=``, a short-lived token from ``POST
/streams/token``: browsers' EventSource cannot send headers, and a key in a URL
would land in access logs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Security
from pymongo import ASCENDING, IndexModel
from telemetry_common.domain.identifiers import PROJECT_ID_PATTERN
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.http.api_keys import (
    API_KEY_HEADER,
    API_KEY_SCHEME,
    MANAGE,
    READ,
    ApiKey,
    hash_key,
    is_admin_key,
    unauthorised_error,
)
from telemetry_common.infra.mongo import Database
from telemetry_common.infra.tenancy import PROJECTS

ANONYMOUS = "anonymous"
ADMIN = "admin"

STREAM_TOKENS = "stream_tokens"
STREAM_TOKEN_PREFIX = "st_"
STREAM_TOKEN_TTL = timedelta(minutes=5)

# The role each operation's security requirement names in the OpenAPI document.
ReadKey = Annotated[str | None, Security(API_KEY_SCHEME, scopes=[READ])]
ManageKey = Annotated[str | None, Security(API_KEY_SCHEME, scopes=[MANAGE])]
AdminKey = Annotated[str | None, Security(API_KEY_SCHEME, scopes=[ADMIN])]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the admin (or anyone, when keys are off), or an issued key;
    and the project the request works in."""

    name: str
    # None: the admin key, or keys are not required.
    key: ApiKey | None
    project_id: str = DEFAULT_PROJECT


ProjectParam = Annotated[
    str | None,
    Query(
        pattern=PROJECT_ID_PATTERN,
        description="the project to work in: with the admin key (or with keys off) any "
        "project, the default project when left out; a project's key works in its own",
        examples=["default"],
    ),
]


def _errors(forbidden: str) -> dict[int | str, dict[str, Any]]:
    return {
        401: {"description": "X-API-Key is missing or not valid", "model": ErrorOut},
        403: {"description": forbidden, "model": ErrorOut},
        # A route's own 404 (an id of its path) replaces this description, not the answer.
        404: {"description": "no project has this `project_id`", "model": ErrorOut},
        503: {
            "description": "the keys are not loaded yet; retry after Retry-After",
            "model": ErrorOut,
        },
    }


READ_ERRORS = _errors(
    "the key may not read: bound to devices, without the read scope, or of another project"
)
WRITE_ERRORS = _errors(
    "the key may not manage: bound to devices, without the manage scope, or of another project"
)
ADMIN_ERRORS = {
    code: answer
    for code, answer in _errors("an issued key may not manage organizations and projects").items()
    if code != 404
}


async def identify(request: Request, presented: str | None) -> Caller:
    """The caller behind ``presented`` (401 when it is no valid key)."""
    settings = request.app.state.settings
    if not settings.api_keys_required:
        return Caller(ANONYMOUS, None)
    if is_admin_key(presented, settings.admin_api_key):
        return Caller(ADMIN, None)
    if not presented:
        raise unauthorised_error()
    keys = request.app.state.keys
    if not keys.loaded:
        raise ApiError(
            503,
            API_KEY_HEADER,
            "keys are not loaded yet; retry later",
            headers={"Retry-After": "5"},
        )
    key = keys.lookup(presented)
    if key is None:
        raise unauthorised_error()
    return Caller(key.name or key.key_id, key)


def authorize(caller: Caller, scope: str, project_id: str | None = None) -> None:
    """403 unless the caller's key may use ``scope`` (on ``project_id``, when given)."""
    key = caller.key
    if key is None:
        return
    if key.devices is not None:
        raise ApiError(403, API_KEY_HEADER, "a device-bound key may only post readings")
    if not key.may(scope):
        raise ApiError(403, API_KEY_HEADER, f"this key's scopes leave out {scope}")
    if project_id is not None and key.project_id != project_id:
        raise ApiError(403, API_KEY_HEADER, f"this key belongs to project {key.project_id!r}")


async def in_project(request: Request, caller: Caller, project_id: str | None) -> Caller:
    """The caller working in its project: a key's own, or the one the admin names
    (404 naming ``project_id`` when there is no such project)."""
    if caller.key is not None:
        if project_id is not None and project_id != caller.key.project_id:
            raise ApiError(
                403, "project_id", f"this key belongs to project {caller.key.project_id!r}"
            )
        return replace(caller, project_id=caller.key.project_id)
    if project_id is None or project_id == DEFAULT_PROJECT:
        return caller
    await require_project(request.app.state.db, project_id)
    return replace(caller, project_id=project_id)


async def require_project(db: Database, project_id: str) -> None:
    """404 naming ``project_id`` unless the project exists."""
    if await db[PROJECTS].find_one({"_id": project_id}, {"_id": 1}) is None:
        raise ApiError(404, "project_id", f"no project {project_id!r}")


async def require_reader(
    request: Request, presented: ReadKey, project_id: ProjectParam = None
) -> Caller:
    caller = await identify(request, presented)
    authorize(caller, READ)
    return await in_project(request, caller, project_id)


Reader = Annotated[Caller, Depends(require_reader)]


async def require_writer(
    request: Request, presented: ManageKey, project_id: ProjectParam = None
) -> Caller:
    """Whoever writes (``name``: the key's name, "admin", or "anonymous" when keys are
    off), in the project the write goes to."""
    caller = await identify(request, presented)
    authorize(caller, MANAGE)
    return await in_project(request, caller, project_id)


Writer = Annotated[Caller, Depends(require_writer)]


async def require_admin(request: Request, presented: AdminKey) -> str:
    """Organizations and projects are the installation's, not a project's: the admin key only."""
    caller = await identify(request, presented)
    if caller.key is not None:
        raise ApiError(403, API_KEY_HEADER, "needs the admin key")
    return caller.name


Admin = Annotated[str, Depends(require_admin)]


ProjectId = Annotated[
    str, Path(min_length=1, max_length=64, description="a project's id", examples=["default"])
]


async def require_project_manager(
    request: Request, presented: ManageKey, project_id: ProjectId
) -> str:
    """Who manages a project's keys: the admin key, or a key of that project with ``manage``."""
    caller = await identify(request, presented)
    authorize(caller, MANAGE, project_id)
    return caller.name


ProjectManager = Annotated[str, Depends(require_project_manager)]


# --- stream tokens ------------------------------------------------------------------


async def ensure_stream_tokens(db: Database) -> None:
    await db[STREAM_TOKENS].create_indexes(
        [IndexModel([("expires_at", ASCENDING)], name="expires_at_ttl", expireAfterSeconds=0)]
    )


async def issue_stream_token(db: Database, caller: Caller) -> tuple[str, datetime]:
    """A token that opens streams as ``caller`` until it expires; stored hashed, in
    MongoDB so that every replica honours it."""
    token = f"{STREAM_TOKEN_PREFIX}{secrets.token_urlsafe(24)}"
    expires_at = utcnow() + STREAM_TOKEN_TTL
    await db[STREAM_TOKENS].insert_one(
        {
            "_id": hash_key(token),
            "name": caller.name,
            "key_id": caller.key.key_id if caller.key else None,
            "expires_at": expires_at,
        }
    )
    return token, expires_at


async def require_stream_reader(
    request: Request,
    presented: ReadKey,
    project_id: ProjectParam = None,
    token: Annotated[
        str | None,
        Query(
            max_length=100,
            description="a stream token from POST /streams/token, for clients that cannot "
            "send X-API-Key (a browser's EventSource)",
            examples=["st_3q2nT0dZ5kz1H4p1aW9cQeYbRr8fLmXo"],
        ),
    ] = None,
) -> Caller:
    """A stream's reader: by X-API-Key as any read, or by a stream token still valid
    whose key is still valid (a revoked key's tokens stop opening streams)."""
    if token is None or not request.app.state.settings.api_keys_required:
        return await require_reader(request, presented, project_id)
    doc = await request.app.state.db[STREAM_TOKENS].find_one(
        {"_id": hash_key(token), "expires_at": {"$gt": utcnow()}}
    )
    if doc is None:
        raise ApiError(401, "token", "missing, expired or not valid; ask POST /streams/token")
    key = None
    if doc["key_id"] is not None:
        key = request.app.state.keys.by_id(doc["key_id"])
        if key is None:
            raise ApiError(401, "token", "its key was revoked")
    caller = Caller(doc["name"], key)
    authorize(caller, READ)
    return await in_project(request, caller, project_id)


StreamReader = Annotated[Caller, Depends(require_stream_reader)]


def read_router(**kwargs: Any) -> APIRouter:
    """A router whose every route needs a key that may read (and documents the refusals)."""
    return APIRouter(dependencies=[Depends(require_reader)], responses=READ_ERRORS, **kwargs)
