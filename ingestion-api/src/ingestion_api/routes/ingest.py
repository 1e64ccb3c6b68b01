"""Where a reading comes in: one at a time, or a batch (JSON array or NDJSON, maybe gzip)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response, Security
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from telemetry_common.domain.reading import InvalidReading, Reading, parse_reading
from telemetry_common.domain.rollup_layout import scoped_id
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError, error_response
from telemetry_common.http.api_keys import API_KEY_SCHEME, INGEST

from ingestion_api import schemas
from ingestion_api.auth import (
    admit_new_devices,
    authenticate,
    authorise_devices,
    charge_quota,
    device_turn,
    limit_device_in_turn,
    limit_devices,
    project_of_key,
    refusal,
)
from ingestion_api.body import parse_json, parse_ndjson, read_limited, require_json_content_type
from ingestion_api.context import IngestContext
from ingestion_api.publish import KafkaUnavailable

JSON_TYPES = ("application/json",)
BATCH_TYPES = ("application/json", "application/x-ndjson")


# Documents the key each ingest call needs; authenticate() enforces it, since the
# hot path does not solve dependencies.
router = APIRouter(tags=["ingest"], dependencies=[Security(API_KEY_SCHEME, scopes=[INGEST])])


class DirectIngestRoutes:
    """Middleware that calls the ingest endpoints straight, past the framework's routing.

    Both are the hot path. Between the user middlewares and an endpoint,
    Starlette and FastAPI put an exception middleware, an exit stack, two
    routers, two exception wrappers and a request handler that solves
    dependencies and validates a response model: a large share of the server's
    time per single reading (BENCHMARKS.md, design choices). These endpoints take
    the Request as it is, return a Response and raise only ApiError, so they are
    called from here; their declared bodies and responses still document them in
    OpenAPI, and the tests check the answers against those models. Other methods,
    and these paths under a root_path, go down the usual stack. Placed inside the
    request-id and metrics middlewares, so answers carry X-Request-ID and are
    counted under the route's template.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]):
        self.app = app
        self._routes = {
            (route.path, method): route
            for route in routes
            if isinstance(route, APIRoute)
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get((scope["path"], scope["method"])) if scope["type"] == "http" else None
        )
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        try:
            response = await route.endpoint(Request(scope, receive, send))
        except ApiError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


def _json(content: Any, status_code: int) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


async def publish_or_503(ctx: IngestContext, readings: list[Reading]) -> None:
    try:
        await ctx.publisher.publish(readings)
    except KafkaUnavailable as exc:
        raise refusal(
            ctx,
            503,
            "kafka",
            str(exc),
            outcome=exc.reason,
            readings=len(readings),
            headers={"Retry-After": str(ctx.settings.retry_after_s)},
        ) from None
    ctx.recent.add_all([scoped_id(r.project_id, r.event_id) for r in readings])


@router.post(
    "/ingest",
    status_code=202,
    response_model=schemas.QueuedOut,
    responses=schemas.ERROR_RESPONSES,
    openapi_extra=schemas.single_request_body(),
)
async def ingest(request: Request) -> Response:
    """Accept one reading; answers 202 only after Kafka acknowledged it."""
    ctx: IngestContext = request.app.state.ingest
    key = authenticate(request, ctx)
    require_json_content_type(request, JSON_TYPES)
    body = parse_json(await read_limited(request, ctx.settings.max_body_bytes))
    try:
        reading = parse_reading(
            body, now=utcnow(), max_future_skew=ctx.max_future_skew, project_id=project_of_key(key)
        )
    except InvalidReading as exc:
        ctx.metrics.count_readings("invalid")
        raise ApiError(422, "", "", errors=exc.errors) from None
    authorise_devices(ctx, key, [reading.device_id])
    admit_new_devices(ctx, reading.project_id, [reading.device_id])
    # Device and event ids are unique within a project only: another project's
    # dev-1 neither shares this one's turn and rate nor makes its readings repeats.
    device = scoped_id(reading.project_id, reading.device_id)
    async with device_turn(ctx, device):
        await limit_device_in_turn(ctx, device)
        if scoped_id(reading.project_id, reading.event_id) in ctx.recent:
            # Kafka acknowledged this very reading lately: a client retry. It is durable.
            ctx.metrics.count_readings("duplicate")
        else:
            charge_quota(ctx, reading.project_id, 1)
            await publish_or_503(ctx, [reading])
            ctx.metrics.count_readings("accepted")
    return _json(
        {"status": "queued", "device_id": reading.device_id, "event_id": reading.event_id}, 202
    )


@router.post(
    "/ingest/batch",
    response_model=schemas.BatchOut,
    responses={
        **schemas.ERROR_RESPONSES,
        422: {"model": schemas.BatchOut, "description": "Every reading was invalid"},
    },
    openapi_extra=schemas.batch_request_body(),
)
async def ingest_batch(request: Request) -> Response:
    """Accept up to MAX_BATCH_READINGS readings; each gets stored, duplicate or invalid."""
    ctx: IngestContext = request.app.state.ingest
    key = authenticate(request, ctx)
    media_type = require_json_content_type(request, BATCH_TYPES)
    raw = await read_limited(request, ctx.settings.max_body_bytes)
    items = parse_ndjson(raw) if media_type == "application/x-ndjson" else parse_json(raw)
    if not isinstance(items, list):
        raise ApiError(422, "body", "must be a JSON array of readings")
    limit = ctx.settings.max_batch_readings
    if len(items) > limit:
        raise refusal(
            ctx,
            413,
            "body",
            f"{len(items)} readings; at most {limit} per batch",
            outcome="too_many",
            readings=len(items),
        )
    now = utcnow()
    skew = ctx.max_future_skew
    project_id = project_of_key(key)
    # One result per item, in request order: BatchItemOut's fields, None fields left out.
    results: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, Reading]] = []
    for index, item in enumerate(items):
        try:
            valid.append(
                (index, parse_reading(item, now=now, max_future_skew=skew, project_id=project_id))
            )
        except InvalidReading as exc:
            results[index] = {
                "index": index,
                "status": "invalid",
                "errors": [e.as_dict() for e in exc.errors],
            }
    device_ids = [r.device_id for _, r in valid]
    authorise_devices(ctx, key, device_ids)
    admit_new_devices(ctx, project_id, device_ids)
    limit_devices(ctx, [scoped_id(project_id, d) for d in device_ids])

    to_publish: list[Reading] = []
    seen: set[str] = set()
    recent = ctx.recent
    for index, reading in valid:
        event_id = reading.event_id
        duplicate = event_id in seen or scoped_id(project_id, event_id) in recent
        if not duplicate:
            seen.add(event_id)
            to_publish.append(reading)
        results[index] = {
            "index": index,
            "status": "duplicate" if duplicate else "stored",
            "event_id": event_id,
            "device_id": reading.device_id,
        }
    if to_publish:
        charge_quota(ctx, project_id, len(to_publish))
        await publish_or_503(ctx, to_publish)
    counts = {
        "stored": len(to_publish),
        "duplicate": len(valid) - len(to_publish),
        "invalid": len(items) - len(valid),
    }
    for outcome, count in counts.items():
        ctx.metrics.count_readings("accepted" if outcome == "stored" else outcome, count)
    status_code = 422 if items and counts["invalid"] == len(items) else 200
    return _json({**counts, "results": results}, status_code)
