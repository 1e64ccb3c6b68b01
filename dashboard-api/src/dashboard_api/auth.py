"""Who may change things through the dashboard API (rules, acknowledgements, webhooks).

With API_KEYS_REQUIRED, a write needs X-API-Key: the admin key, or an issued key
bound to no device. Device-bound keys exist so a stolen device cannot post for
others; letting one edit alert rules or webhooks would undo that.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from telemetry_common.api_errors import ApiError, ErrorOut
from telemetry_common.api_keys import (
    API_KEY_HEADER,
    MANAGE,
    ApiKey,
    is_admin_key,
    unauthorised_error,
)
from telemetry_common.rollup_layout import DEFAULT_PROJECT

ANONYMOUS = "anonymous"
ADMIN = "admin"

WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "X-API-Key is missing or not valid", "model": ErrorOut},
    403: {
        "description": "the key is bound to devices and may only post readings",
        "model": ErrorOut,
    },
    503: {"description": "the keys are not loaded yet; retry after Retry-After", "model": ErrorOut},
}


async def require_writer(request: Request) -> str:
    """The name of whoever writes: the key's name, "admin", or "anonymous" when keys are off."""
    settings = request.app.state.settings
    if not settings.api_keys_required:
        return ANONYMOUS
    presented = request.headers.get(API_KEY_HEADER)
    if is_admin_key(presented, settings.admin_api_key):
        return ADMIN
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
    if key.devices is not None:
        raise ApiError(403, API_KEY_HEADER, "a device-bound key may only post readings")
    if not key.may(MANAGE):
        raise ApiError(403, API_KEY_HEADER, "this key's scopes leave out manage")
    if key.project_id != DEFAULT_PROJECT:
        # Rules, silences, webhooks and alerts are all the default project's so far.
        raise ApiError(403, API_KEY_HEADER, f"this key belongs to project {key.project_id!r}")
    return key.name or key.key_id


Writer = Annotated[str, Depends(require_writer)]

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "X-API-Key is missing or not the admin key", "model": ErrorOut},
    403: {"description": "an issued key may not manage organizations", "model": ErrorOut},
}


async def require_admin(request: Request) -> str:
    """Organizations and projects are the installation's, not a project's: the admin
    key only ("anonymous" when keys are off, as locally)."""
    settings = request.app.state.settings
    if not settings.api_keys_required:
        return ANONYMOUS
    presented = request.headers.get(API_KEY_HEADER)
    if is_admin_key(presented, settings.admin_api_key):
        return ADMIN
    keys = request.app.state.keys
    if presented and keys.loaded and keys.lookup(presented) is not None:
        raise ApiError(403, API_KEY_HEADER, "needs the admin key")
    raise unauthorised_error()


Admin = Annotated[str, Depends(require_admin)]


ProjectId = Annotated[
    str, Path(min_length=1, max_length=64, description="a project's id", examples=["default"])
]


async def require_project_manager(request: Request, project_id: ProjectId) -> str:
    """Who manages a project's keys: the admin key, or a key of that project with
    ``manage`` ("anonymous" when keys are off)."""
    settings = request.app.state.settings
    if not settings.api_keys_required:
        return ANONYMOUS
    presented = request.headers.get(API_KEY_HEADER)
    if is_admin_key(presented, settings.admin_api_key):
        return ADMIN
    keys = request.app.state.keys
    key: ApiKey | None = keys.lookup(presented) if keys.loaded else None
    if key is None:
        raise unauthorised_error()
    if key.project_id != project_id or key.devices is not None or not key.may(MANAGE):
        raise ApiError(403, API_KEY_HEADER, "needs the admin key or this project's manage key")
    return key.name or key.key_id


ProjectManager = Annotated[str, Depends(require_project_manager)]
