"""The small HTTP side of a worker: /health and /metrics, served in the worker's own loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from telemetry_common.metrics import add_metrics_route


def worker_app(
    name: str, registry: CollectorRegistry, health: Callable[[], dict[str, object]]
) -> FastAPI:
    app = FastAPI(title=name, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def get_health() -> JSONResponse:
        """Liveness and readiness: 200 while consuming, 503 while a dependency is down."""
        report = health()
        return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)

    add_metrics_route(app, registry)
    return app


class _SignalFreeServer(uvicorn.Server):
    """uvicorn serving beside a worker, which owns SIGTERM and SIGINT: left to uvicorn,
    they would stop /health first and reach the worker only once uvicorn is done."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = _SignalFreeServer(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", log_config=None, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    return server, task
