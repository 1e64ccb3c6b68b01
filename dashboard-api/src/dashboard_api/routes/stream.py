"""Server-Sent Events: a device's new readings and rollups, and alert transitions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.http.api_errors import ApiError, ErrorOut

from dashboard_api.alert_feed import AlertFeed
from dashboard_api.auth import (
    READ_ERRORS,
    Reader,
    StreamReader,
    issue_stream_token,
    require_stream_reader,
)
from dashboard_api.deps import BAD_PARAMETER
from dashboard_api.live import DeviceFeeds, Event

# Streams take X-API-Key or a stream token (?token=) from POST /streams/token.
router = APIRouter(
    tags=["live"], dependencies=[Depends(require_stream_reader)], responses=READ_ERRORS
)
tokens = APIRouter(tags=["live"])

# How long an EventSource waits before reconnecting after the stream ends.
RETRY_MS = 3000

SSE_EXAMPLE = (
    "id: e001\n"
    "event: reading\n"
    'data: {"event_id":"e001","device_id":"dev-1","ts":"2025-01-15T10:00:00.000Z",'
    '"metrics":{"temperature_c":25.5},...}\n\n'
    "event: rollup\n"
    'data: {"device_id":"dev-1","sensor_type":"temperature_c","resolution":"1m",'
    '"timestamp":"2025-01-15T10:00:00.000Z","count":3,...}\n\n'
)

# "\n" ends lines as before (sse-starlette's default is "\r\n"); clients accept both.
SEP = "\n"


def sse(event: Event) -> ServerSentEvent:
    event_id = event.data["event_id"] if event.kind == "reading" else None
    return ServerSentEvent(
        orjson.dumps(event.data).decode(), event=event.kind, id=event_id, sep=SEP
    )


async def sse_events(
    greeting: str, queue: asyncio.Queue[Any], encode: Callable[[Any], ServerSentEvent]
) -> AsyncIterator[ServerSentEvent]:
    """A stream's events: the retry hint and a greeting, then each queued event."""
    yield ServerSentEvent(retry=RETRY_MS, sep=SEP)
    yield ServerSentEvent(comment=greeting, sep=SEP)
    # None: dropped as too slow, or the server is stopping.
    while (event := await queue.get()) is not None:
        yield encode(event)


class EventStream(EventSourceResponse):
    """Server-Sent Events with a `: keep-alive` comment every ``heartbeat_s``.

    sse-starlette ends the stream when uvicorn is told to stop, so an open stream
    does not hold the shutdown for its whole grace period. ``close`` runs however
    the response ends (the client left, the server stops, the watcher was dropped),
    even when it ended before the first event was read.
    """

    def __init__(
        self, events: AsyncIterator[ServerSentEvent], heartbeat_s: float, close: Callable[[], None]
    ):
        super().__init__(
            events,
            # No caching; sse-starlette also turns off nginx-style buffering.
            headers={"Cache-Control": "no-cache"},
            ping=heartbeat_s,
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep=SEP),
            sep=SEP,
        )
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()


@router.get(
    "/devices/{device_id}/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`reading` events (as in /telemetry) for readings newer than any "
            "pushed before, and `rollup` events (as in /aggregated) when a bucket they fall "
            "in changes; a `: keep-alive` comment every STREAM_HEARTBEAT_S",
            "content": {"text/event-stream": {"example": SSE_EXAMPLE}},
        },
        **BAD_PARAMETER,
    },
)
async def device_stream(
    request: Request,
    caller: StreamReader,
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])],
) -> EventStream:
    """Live: the device's new readings and rollup updates, as Server-Sent Events."""
    feeds: DeviceFeeds = request.app.state.feeds
    # Subscribed before answering: a MongoDB failure is still a 503, and every
    # reading stored after the response starts is pushed.
    watcher = await feeds.subscribe(caller.project_id, device_id)
    return EventStream(
        sse_events(f"watching {device_id}", watcher.queue, sse),
        request.app.state.settings.stream_heartbeat_s,
        lambda: feeds.unsubscribe(watcher),
    )


ALERT_SSE_EXAMPLE = (
    "id: e001:temperature_high:fired\n"
    'data: {"alert_id":"e001:temperature_high","device_id":"dev-1","rule_id":"temperature_high",'
    '"status":"active","severity":"critical","value":61.0,"transition":"fired",'
    '"transition_at":"2025-01-15T10:00:00.000Z",'
    '"notification_id":"e001:temperature_high:fired",...}\n\n'
)
# How long a new client waits for the feed to reach Kafka (at start, or after Kafka was away).
FEED_READY_S = 5.0


def alert_sse(event: dict[str, Any]) -> ServerSentEvent:
    # The first version's shape (`data:` only, no event name), so EventSource.onmessage sees it;
    # the id lets a client drop a repeat.
    return ServerSentEvent(
        orjson.dumps(event).decode(), id=event.get("notification_id", ""), sep=SEP
    )


@router.get(
    "/alerts/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "one event per alert transition (`transition`: fired or resolved) "
            "as published to alerts.triggered, from the moment of connecting; silenced "
            "transitions are not streamed; a `: keep-alive` comment every STREAM_HEARTBEAT_S",
            "content": {"text/event-stream": {"example": ALERT_SSE_EXAMPLE}},
        },
        503: {"description": "the stream cannot reach Kafka yet; retry", "model": ErrorOut},
        **BAD_PARAMETER,
    },
)
async def alert_stream(
    request: Request,
    caller: StreamReader,
    device_id: Annotated[
        str | None,
        Query(pattern=DEVICE_ID_PATTERN, description="only this device's", examples=["dev-1"]),
    ] = None,
) -> EventStream:
    """Live: alert transitions as Server-Sent Events, of one device or all."""
    feed: AlertFeed = request.app.state.alert_feed
    try:
        await asyncio.wait_for(feed.ready.wait(), FEED_READY_S)
    except TimeoutError:
        raise ApiError(
            503, "kafka", "the alert stream is not connected yet", headers={"Retry-After": "5"}
        ) from None
    # Subscribed before answering: every transition published after the response
    # starts is pushed.
    watcher = feed.subscribe(caller.project_id, device_id)
    return EventStream(
        sse_events(
            f"watching alerts of {device_id}" if device_id else "watching alerts",
            watcher.queue,
            alert_sse,
        ),
        request.app.state.settings.stream_heartbeat_s,
        lambda: feed.unsubscribe(watcher),
    )


class StreamTokenOut(BaseModel):
    token: str = Field(examples=["st_3q2nT0dZ5kz1H4p1aW9cQeYbRr8fLmXo"])
    expires_at: str = Field(examples=["2025-01-15T10:05:00.000Z"])


@tokens.post(
    "/streams/token",
    status_code=201,
    response_model=StreamTokenOut,
    responses={
        201: {
            "content": {
                "application/json": {
                    "example": {
                        "token": "st_3q2nT0dZ5kz1H4p1aW9cQeYbRr8fLmXo",
                        "expires_at": "2025-01-15T10:05:00.000Z",
                    }
                }
            }
        },
        **READ_ERRORS,
    },
)
async def stream_token(request: Request, caller: Reader) -> dict[str, Any]:
    """A token that opens the live streams as this key for five minutes: pass it as
    `?token=` where headers cannot be set (a browser's EventSource). A stream already
    open stays open; a revoked key's tokens stop working at once."""
    token, expires_at = await issue_stream_token(request.app.state.db, caller)
    return {"token": token, "expires_at": iso_z(expires_at)}
