"""Who may post: device API keys (when required), the devices a key is bound to, the admin key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import Request
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.http.api_errors import ApiError
from telemetry_common.http.api_keys import (
    API_KEY_HEADER,
    INGEST,
    ApiKey,
    is_admin_key,
    unauthorised_error,
)

from ingestion_api.context import IngestContext
from ingestion_api.limits import TooManyWaiting, retry_after_header

RATE_LIMIT_HOLD_S = 0.25


def refusal(
    ctx: IngestContext,
    status: int,
    field: str,
    reason: str,
    *,
    outcome: str,
    readings: int = 1,
    headers: dict[str, str] | None = None,
) -> ApiError:
    """Count a refusal in the metrics and build the error that answers it."""
    ctx.metrics.refused.labels(str(status), outcome).inc()
    ctx.metrics.count_readings(outcome, readings)
    return ApiError(status, field, reason, headers=headers)


def unauthorised(ctx: IngestContext, readings: int) -> ApiError:
    ctx.metrics.refused.labels("401", "unauthorised").inc()
    ctx.metrics.count_readings("unauthorised", readings)
    return unauthorised_error()


def authenticate(request: Request, ctx: IngestContext) -> ApiKey | None:
    """The caller's key when keys are required (401 without a valid one, 429 over its rate)."""
    if not ctx.settings.api_keys_required:
        return None
    if ctx.keys is None or not ctx.keys.loaded:
        raise refusal(
            ctx,
            503,
            API_KEY_HEADER,
            "keys are not loaded yet; retry later",
            outcome="keys_unavailable",
            headers={"Retry-After": str(ctx.settings.retry_after_s)},
        )
    presented = request.headers.get(API_KEY_HEADER)
    key = ctx.keys.lookup(presented)
    if key is None:
        if is_admin_key(presented, ctx.settings.admin_api_key):
            return None  # the admin key may do everything, posting for any device too
        raise unauthorised(ctx, readings=1)
    if not key.may(INGEST):
        raise refusal(
            ctx, 403, API_KEY_HEADER, "this key's scopes leave out ingest", outcome="forbidden"
        )
    wait = ctx.key_limits.take([(key.key_id, 1.0)])
    if wait:
        raise refusal(
            ctx,
            429,
            API_KEY_HEADER,
            f"this key is over {ctx.key_limits.rate:g} requests/s",
            outcome="rate_limited",
            headers=retry_after_header(wait),
        )
    return key


def project_of_key(key: ApiKey | None) -> str:
    """The project a request's readings belong to: its key's (the default without one)."""
    return key.project_id if key is not None else DEFAULT_PROJECT


def authorise_devices(ctx: IngestContext, key: ApiKey | None, device_ids: Iterable[str]) -> None:
    """403 when a device-bound key posts for a device it is not bound to."""
    if key is None or key.devices is None:
        return
    ids = list(device_ids)
    foreign = sorted({d for d in ids if not key.may_post_for(d)})
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise refusal(
            ctx,
            403,
            "device_id",
            f"this key may not post for {shown}",
            outcome="forbidden",
            readings=len(ids),
        )


def charge_quota(ctx: IngestContext, project_id: str, readings: int) -> None:
    """429 with Retry-After when the project is over its readings/s quota; the whole
    request or none of it. Counted per project either way."""
    rate = ctx.quotas.readings_per_s.get(project_id) if ctx.quotas is not None else None
    wait = ctx.reading_quotas.take(project_id, rate, readings)
    if wait:
        ctx.metrics.count_project(project_id, "over_quota", readings)
        raise refusal(
            ctx,
            429,
            "project_id",
            f"project {project_id!r} is over its quota of {rate:g} readings/s",
            outcome="over_quota",
            readings=readings,
            headers=retry_after_header(wait),
        )
    ctx.metrics.count_project(project_id, "accepted", readings)


def admit_new_devices(ctx: IngestContext, project_id: str, device_ids: list[str]) -> None:
    """429 when the request's devices new to the project would take it past its device
    quota; Retry-After is when a raised quota would be seen."""
    quotas = ctx.quotas
    if quotas is None:
        return
    over = quotas.new_devices_over_quota(project_id, device_ids)
    if over:
        ctx.metrics.count_project(project_id, "over_device_quota", len(device_ids))
        shown = ", ".join(over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
        raise refusal(
            ctx,
            429,
            "device_id",
            f"project {project_id!r} is at its quota of {quotas.devices[project_id]} devices; "
            f"{shown} would be more",
            outcome="over_quota",
            readings=len(device_ids),
            headers=retry_after_header(ctx.settings.api_keys_refresh_s),
        )


def limit_devices(ctx: IngestContext, device_ids: Iterable[str]) -> None:
    """429 with Retry-After when a device is over its rate; the whole request or none of it."""
    ids = list(device_ids)
    wait = ctx.device_limits.take((d, 1.0) for d in ids)
    if wait:
        raise _over_rate(ctx, wait, len(ids))


async def limit_device_in_turn(ctx: IngestContext, device_id: str) -> None:
    """limit_devices for one reading whose device holds its turn: the 429 comes after a pause.

    The pause (until the device's next token, at most RATE_LIMIT_HOLD_S) keeps
    the turn, so a device that retries the instant it is refused is slowed to
    the pace of its own refusals instead of spending the server's CPU on them.
    A client that obeys Retry-After never notices: it waits longer anyway.
    """
    wait = ctx.device_limits.take([(device_id, 1.0)])
    if wait:
        await asyncio.sleep(min(wait, RATE_LIMIT_HOLD_S))
        raise _over_rate(ctx, wait, 1)


def _over_rate(ctx: IngestContext, wait: float, readings: int) -> ApiError:
    return refusal(
        ctx,
        429,
        "device_id",
        f"a device in this request is over {ctx.device_limits.rate:g} readings/s",
        outcome="rate_limited",
        readings=readings,
        headers=retry_after_header(wait),
    )


@asynccontextmanager
async def device_turn(ctx: IngestContext, device_id: str) -> AsyncIterator[None]:
    """Hold the device's turn (see DeviceTurns); 429 when too many of its requests wait."""
    turns = ctx.device_turns
    if not turns.enabled:
        yield
        return
    try:
        await turns.acquire(device_id)
    except TooManyWaiting:
        raise refusal(
            ctx,
            429,
            "device_id",
            f"this device already has {ctx.settings.device_waiting_requests} requests "
            "waiting; send fewer at once",
            outcome="rate_limited",
            headers=retry_after_header(1),
        ) from None
    try:
        yield
    finally:
        turns.release(device_id)


def require_admin(request: Request, ctx: IngestContext) -> None:
    presented = request.headers.get(API_KEY_HEADER)
    if is_admin_key(presented, ctx.settings.admin_api_key):
        return
    if ctx.keys is not None and ctx.keys.lookup(presented) is not None:
        raise refusal(
            ctx, 403, API_KEY_HEADER, "needs the admin key", outcome="forbidden", readings=0
        )
    raise unauthorised(ctx, readings=0)
