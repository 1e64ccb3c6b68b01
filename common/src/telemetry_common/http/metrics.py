"""The two HTTP APIs' metrics: requests by route template (bounded cardinality), GET /metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry_common.infra.metrics import REQUEST_BUCKETS, Instruments


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry):
        on = Instruments(registry)
        self.app = app
        self.requests = on.counter(
            "http_requests_total", "HTTP requests answered", ["method", "route", "status"]
        )
        self.duration = on.histogram(
            "http_request_duration_seconds",
            "Time from request to the end of the response",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
        )
        # labels() takes a lock and builds a key on each call; the children are few
        # (method x route x status) and looked up on every request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            labels = (method, route, str(status))
            series = self._children[key] = (
                self.requests.labels(*labels),
                self.duration.labels(*labels),
            )
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label so scanners cannot explode the series.
            template = getattr(route, "path", None) or "unmatched"
            requests, duration = self._series(scope["method"], template, status)
            requests.inc()
            duration.observe(time.perf_counter() - started)


def add_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """GET /metrics in the Prometheus text format (a route, not a mount: no 307 to /metrics/)."""

    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "http_requests_total 42"}}}},
    )
