"""The small HTTP side of a worker: /health and /metrics, served in the worker's own loop.

Two fixed routes need no web framework: a plain ASGI callable under uvicorn,
with prometheus-client's own ASGI app for /metrics, keeps FastAPI out of the
workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import orjson
import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _json(send: Send, status: int, body: object) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


def worker_app(
    name: str, registry: CollectorRegistry, health: Callable[[], dict[str, object]]
) -> ASGIApp:
    """GET /health: 200 while consuming, 503 while a dependency is down; GET /metrics."""
    metrics = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            await metrics(scope, receive, send)
        elif path == "/health":
            report = health()
            await _json(send, 200 if report.get("status") == "ok" else 503, report)
        else:
            await _json(send, 404, {"detail": f"{name} serves /health and /metrics only"})

    return app


class _SignalFreeServer(uvicorn.Server):
    """uvicorn serving beside a worker, which owns SIGTERM and SIGINT: left to uvicorn,
    they would stop /health first and reach the worker only once uvicorn is done."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: ASGIApp, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = _SignalFreeServer(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", log_config=None, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    return server, task
