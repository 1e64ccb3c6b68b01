"""A dashboard API served on a free port, and Server-Sent Events read as a browser reads them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import uvicorn
from fastapi import FastAPI
from telemetry_tools.servers import free_port
from telemetry_tools.testing import eventually

# A guard against a hung stream, not a speed requirement.
PATIENCE_S = 60


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await eventually(started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, PATIENCE_S)


@dataclass(frozen=True)
class Answer:
    status_code: int
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)


class Api:
    """An API called over HTTP, each answer read whole."""

    def __init__(self, session: aiohttp.ClientSession, base: str):
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        async with self.session.request(method, path, **kwargs) as response:
            return Answer(response.status, await response.text())

    async def get(self, path: str, **kwargs: Any) -> Answer:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Answer:
        return await self.call("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Answer:
        return await self.call("DELETE", path, **kwargs)


@asynccontextmanager
async def api_at(base: str, key: str | None = None) -> AsyncIterator[Api]:
    headers = {"X-API-Key": key} if key else None
    async with aiohttp.ClientSession(base_url=base, headers=headers) as session:
        yield Api(session, base)


class EventStream:
    """Server-Sent Events as an EventSource parses them, comments kept as {"comment": ...}."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response

    async def next_event(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            line = (await self.response.content.readline()).decode().rstrip("\n")
            if line == "" and fields:
                return fields
            if line.startswith(":"):
                return {"comment": line[1:].strip()}
            if line:
                name, _, value = line.partition(": ")
                fields[name] = orjson.loads(value) if name == "data" else value

    async def until(self, done: Any) -> list[dict[str, Any]]:
        """Events up to and including the first after which ``done(events)`` holds."""
        seen: list[dict[str, Any]] = []

        async def read() -> None:
            while not done(seen):
                seen.append(await self.next_event())

        await asyncio.wait_for(read(), PATIENCE_S)
        return seen


@asynccontextmanager
async def stream(
    session: aiohttp.ClientSession, url: str, greeting: str
) -> AsyncIterator[EventStream]:
    """An open stream, once its retry hint and greeting came: the subscription is in place."""
    async with session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = EventStream(response)
        assert await events.next_event() == {"retry": "3000"}
        assert await events.next_event() == {"comment": greeting}
        yield events
