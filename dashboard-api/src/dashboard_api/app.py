"""The dashboard API: FastAPI app, lifespan and the resource routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from pymongo.errors import PyMongoError
from telemetry_common.http.api_errors import install_error_handlers
from telemetry_common.http.api_keys import KeyCache
from telemetry_common.http.metrics import RequestMetricsMiddleware, add_metrics_route
from telemetry_common.http.request_id import add_request_id
from telemetry_common.infra.background import BackgroundTasks
from telemetry_common.infra.metrics import new_registry
from telemetry_common.infra.mongo import Database, connect, ensure_indexes
from telemetry_common.infra.retry import retrying
from telemetry_common.infra.settings import DashboardSettings
from telemetry_common.infra.tenancy import ensure_tenancy

from dashboard_api.alert_feed import AlertFeed
from dashboard_api.auth import ensure_stream_tokens
from dashboard_api.live import DeviceFeeds
from dashboard_api.routes import (
    aggregates,
    alert_rules,
    alerts,
    devices,
    metrics_v1,
    silences,
    stats,
    stream,
    telemetry,
    tenancy,
)
from dashboard_api.routes import webhooks as webhook_routes
from dashboard_api.schemas import HealthOut
from dashboard_api.system_stats import StatsSnapshot
from dashboard_api.ui import install_ui, redirect_to_ui, wants_page


async def _ensure_indexes_when_reachable(db: Database, merged: list[str]) -> None:
    async for attempt in retrying(
        "create indexes", retry_on=lambda exc: isinstance(exc, PyMongoError), max_s=30.0
    ):
        with attempt:
            await ensure_indexes(db, raw_retention=None, merged_resolutions=merged)
            await ensure_tenancy(db)
            await ensure_stream_tokens(db)


def create_app(settings: DashboardSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or new_registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = connect(settings.mongo_url, "dashboard-api")
        app.state.db = client[settings.mongo_db]
        app.state.settings = settings
        app.state.feeds = DeviceFeeds(
            app.state.db, settings.stream_poll_interval_s, settings.rollup_plan
        )
        # The queries lean on these indexes; creating them is idempotent and lets the
        # dashboard start before either worker ran. In the background, so the API
        # starts (and /health says why it is degraded) while MongoDB is down.
        background = BackgroundTasks()
        background.start(
            _ensure_indexes_when_reachable(app.state.db, list(settings.rollup_plan.derived)),
            name="create indexes",
        )
        app.state.keys = KeyCache(app.state.db, settings.api_keys_refresh_s)
        if settings.api_keys_required:
            await app.state.keys.start()
        app.state.alert_feed = AlertFeed(
            settings.kafka_bootstrap_servers, settings.alerts_topic, registry
        )
        app.state.alert_feed.start()
        app.state.stats = StatsSnapshot(app.state.db, settings, registry)
        app.state.stats.start()
        yield
        await app.state.stats.stop()
        await app.state.alert_feed.stop()
        await app.state.keys.stop()
        app.state.feeds.close()
        await background.stop()
        await client.close()

    app = FastAPI(
        title="Telemetry dashboard API",
        version="0.1.0",
        description="Readings, rollups, alerts, devices and stats. Timestamps are ISO 8601 UTC.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    add_request_id(app)
    add_metrics_route(app, registry)

    @app.exception_handler(PyMongoError)
    async def mongo_unavailable(_: Request, exc: PyMongoError) -> JSONResponse:
        return JSONResponse(
            {
                "detail": f"MongoDB unavailable: {type(exc).__name__}",
                "errors": [{"field": "mongo", "reason": "unavailable"}],
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get(
        "/",
        summary="Service banner",
        response_model=dict[str, str],
        responses={
            307: {
                "description": "a browser (Accept: text/html) is sent to the web dashboard",
                "headers": {"Location": {"schema": {"type": "string"}, "example": "/ui/"}},
                "content": {"text/html": {"example": ""}},
            }
        },
    )
    async def root(request: Request) -> Any:
        """A short health message for API clients; browsers go to the dashboard at /ui/."""
        if wants_page(request):
            return redirect_to_ui()
        return {"message": "IoT telemetry dashboard API", "status": "ok", "docs": "/docs"}

    @app.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def health(request: Request) -> JSONResponse:
        """200 when MongoDB answers a ping; 503 otherwise."""
        try:
            await request.app.state.db.command("ping")
            ok = True
        except PyMongoError:
            ok = False
        body = HealthOut(status="ok" if ok else "degraded", mongo=ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    # Webhooks first, so an /alerts/{alert_id} route never takes "webhooks" for an alert id.
    for router in (
        webhook_routes.router,
        webhook_routes.reads,
        telemetry.router,
        aggregates.router,
        metrics_v1.router,
        alert_rules.router,
        alert_rules.reads,
        silences.router,
        silences.reads,
        alerts.router,
        alerts.reads,
        devices.router,
        stats.router,
        stream.router,
        stream.tokens,
        tenancy.router,
    ):
        app.include_router(router)
    install_ui(app, settings)
    return app
