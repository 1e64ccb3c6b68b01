"""Issuing and revoking device API keys, guarded by ADMIN_API_KEY."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Security
from telemetry_common.domain.identifiers import DEVICE_ID_RE
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.http.api_keys import API_KEY_SCHEME, ApiKey, issue_key, list_keys, revoke_key

from ingestion_api import schemas
from ingestion_api.auth import require_admin
from ingestion_api.context import IngestContext, get_context


async def admin_context(request: Request) -> IngestContext:
    ctx = await get_context(request)
    require_admin(request, ctx)
    if ctx.db is None:
        raise ApiError(503, "MONGO_URL", "key storage is not configured")
    return ctx


Admin = Annotated[IngestContext, Depends(admin_context)]
router = APIRouter(
    prefix="/admin/keys",
    dependencies=[Security(API_KEY_SCHEME, scopes=["admin"])],
    tags=["admin"],
    responses={
        401: schemas.ERROR_RESPONSES[401],
        403: {"model": ErrorOut, "description": "an issued key, not the admin key"},
        422: {"model": ErrorOut, "description": "a field is wrong; `errors` names it"},
        503: {"model": ErrorOut, "description": "key storage is not configured"},
    },
)


def key_out(key: ApiKey) -> dict[str, Any]:
    public = key.shown_fields()
    public["created_at"] = iso_z(public["created_at"])
    public["revoked_at"] = iso_z(public["revoked_at"]) if public["revoked_at"] else None
    return public


@router.post("", status_code=201, response_model=schemas.KeyIssuedOut)
async def create_key(body: schemas.KeyIn, ctx: Admin) -> dict[str, Any]:
    """Issue a device key; the key is in this answer only."""
    bad = [d for d in body.devices or [] if not DEVICE_ID_RE.fullmatch(d)]
    if bad:
        raise ApiError(422, "devices", f"not device ids: {', '.join(map(repr, bad[:5]))}")
    assert ctx.db is not None
    key, record = await issue_key(ctx.db, body.name, body.devices)
    if ctx.keys is not None:
        await ctx.keys.reload()
    return {**key_out(record), "api_key": key}


@router.get("", response_model=schemas.KeysOut)
async def get_keys(ctx: Admin) -> dict[str, Any]:
    """Every key ever issued, revoked ones included; never the keys themselves."""
    assert ctx.db is not None
    keys = [key_out(k) for k in await list_keys(ctx.db)]
    return {"data": keys, "count": len(keys)}


@router.delete(
    "/{key_id}",
    response_model=schemas.KeyOut,
    responses={404: {"model": ErrorOut, "description": "No such key"}},
)
async def delete_key(
    ctx: Admin, key_id: str = Path(pattern=r"^[0-9a-f]{12}$", examples=["3f9c2a1b7d4e"])
) -> dict[str, Any]:
    """Revoke a key: this replica refuses it at once, every other within API_KEYS_REFRESH_S."""
    assert ctx.db is not None
    record = await revoke_key(ctx.db, key_id)
    if record is None:
        raise ApiError(404, "key_id", f"no key {key_id!r}")
    if ctx.keys is not None:
        await ctx.keys.reload()
    return key_out(record)
