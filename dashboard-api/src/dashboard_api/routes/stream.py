"""`GET /devices/{device_id}/stream`: Server-Sent Events of a device's new readings and rollups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse

from dashboard_api.deps import BAD_PARAMETER, DEVICE_ID_PATTERN
from dashboard_api.live import DeviceFeeds, Event, Watcher

router = APIRouter(tags=["live"])

# How long an EventSource waits before reconnecting after the stream ends.
RETRY_MS = 3000

SSE_EXAMPLE = (
    "event: reading\n"
    "id: e001\n"
    'data: {"event_id":"e001","device_id":"dev-1","ts":"2025-01-15T10:00:00.000Z",'
    '"metrics":{"temperature_c":25.5},...}\n\n'
    "event: rollup\n"
    'data: {"device_id":"dev-1","sensor_type":"temperature_c","resolution":"1m",'
    '"timestamp":"2025-01-15T10:00:00.000Z","count":3,...}\n\n'
)


def sse(event: Event) -> bytes:
    event_id = f"id: {event.data['event_id']}\n" if event.kind == "reading" else ""
    return f"event: {event.kind}\n{event_id}data: ".encode() + orjson.dumps(event.data) + b"\n\n"


async def _events(feeds: DeviceFeeds, watcher: Watcher, heartbeat_s: float) -> AsyncIterator[bytes]:
    try:
        yield f"retry: {RETRY_MS}\n\n: watching {watcher.device_id}\n\n".encode()
        while True:
            try:
                event = await asyncio.wait_for(watcher.queue.get(), heartbeat_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is None:  # dropped as too slow, or the server is stopping
                return
            yield sse(event)
    finally:
        feeds.unsubscribe(watcher)


@router.get(
    "/devices/{device_id}/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`reading` events (as in /telemetry) for readings newer than any "
            "pushed before, and `rollup` events (as in /aggregated) when a bucket they fall "
            "in changes; a `: keep-alive` comment on a quiet stream",
            "content": {"text/event-stream": {"example": SSE_EXAMPLE}},
        },
        **BAD_PARAMETER,
    },
)
async def device_stream(
    request: Request,
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])],
) -> StreamingResponse:
    """Live: the device's new readings and rollup updates, as Server-Sent Events."""
    feeds: DeviceFeeds = request.app.state.feeds
    # Subscribed before answering: a MongoDB failure is still a 503, and every
    # reading stored after the response starts is pushed.
    watcher = await feeds.subscribe(device_id)
    return StreamingResponse(
        _events(feeds, watcher, request.app.state.settings.stream_heartbeat_s),
        media_type="text/event-stream",
        # No caching, and no buffering by nginx-style proxies: events go out as they come.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
