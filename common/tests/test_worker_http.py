"""A worker's /health and /metrics, served by a real uvicorn in the test's loop."""

from __future__ import annotations

import asyncio

import requests
from prometheus_client import CollectorRegistry, Counter
from telemetry_common.infra.worker_http import serve, worker_app
from telemetry_tools.servers import free_port
from telemetry_tools.testing import eventually


async def test_health_follows_the_worker_and_metrics_show_its_registry() -> None:
    registry = CollectorRegistry()
    Counter("readings_seen_total", "test counter", registry=registry).inc(3)
    report: dict[str, object] = {"status": "degraded", "kafka": False}
    port = free_port()
    server, task = await serve(
        worker_app("test-worker", registry, lambda: report), "127.0.0.1", port
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> requests.Response:
        return requests.get(base + path, timeout=5)

    try:

        async def started() -> bool:
            return server.started

        await eventually(started)
        degraded = await asyncio.to_thread(get, "/health")
        assert degraded.status_code == 503
        assert degraded.json() == {"status": "degraded", "kafka": False}
        report.update(status="ok", kafka=True)
        healthy = await asyncio.to_thread(get, "/health")
        assert healthy.status_code == 200 and healthy.json()["kafka"] is True
        metrics = await asyncio.to_thread(get, "/metrics")
        assert metrics.status_code == 200
        assert "readings_seen_total 3.0" in metrics.text
        unknown = await asyncio.to_thread(get, "/docs")
        assert unknown.status_code == 404 and "test-worker" in unknown.json()["detail"]
    finally:
        server.should_exit = True
        await task
