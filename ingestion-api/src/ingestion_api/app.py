"""The ingestion API: what it is built from, its lifespan and its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from telemetry_common.http.api_errors import install_error_handlers
from telemetry_common.http.api_keys import API_KEYS, KeyCache
from telemetry_common.http.metrics import RequestMetricsMiddleware, add_metrics_route
from telemetry_common.http.request_id import add_request_id
from telemetry_common.infra.metrics import new_registry
from telemetry_common.infra.mongo import Client, connect
from telemetry_common.infra.settings import IngestionSettings
from telemetry_common.infra.tenancy import ProjectQuotas

from ingestion_api import schemas
from ingestion_api.context import IngestContext
from ingestion_api.dedupe import RecentEventIds
from ingestion_api.limits import DeviceTurns, RateLimiter, ReadingQuotas
from ingestion_api.metrics import IngestMetrics
from ingestion_api.publish import ReadingPublisher
from ingestion_api.routes import admin, ingest

DESCRIPTION = """
Devices post readings here. **A 2xx means the reading is durable in Kafka**
(acks=all, idempotent producer); when Kafka cannot take it the answer is 503
with `Retry-After`, never a false 2xx.

With `API_KEYS_REQUIRED=true` every ingest call needs `X-API-Key`; keys are
issued with `telemetry-keys` or `POST /admin/keys` and may be bound to devices.
Devices and keys have rate limits (429 with `Retry-After`).
"""


def create_app(
    settings: IngestionSettings,
    registry: CollectorRegistry | None = None,
    publisher: ReadingPublisher | None = None,
) -> FastAPI:
    """The app; ``publisher`` is replaceable so the benchmark can measure the API without Kafka."""
    registry = registry or new_registry()
    publisher = publisher or ReadingPublisher(
        settings.kafka_bootstrap_servers,
        settings.telemetry_topic,
        settings.kafka_send_timeout_s,
        max_in_flight=settings.max_in_flight_readings,
        registry=registry,
    )
    # MongoDB only when keys are in play: an open ingestion API depends on Kafka alone.
    mongo: Client | None = None
    if settings.api_keys_required or settings.admin_api_key is not None:
        mongo = connect(settings.mongo_url, "ingestion-api")
    db = mongo[settings.mongo_db] if mongo is not None else None
    ctx = IngestContext(
        settings=settings,
        publisher=publisher,
        db=db,
        keys=KeyCache(db, settings.api_keys_refresh_s) if db is not None else None,
        quotas=ProjectQuotas(db, settings.api_keys_refresh_s) if db is not None else None,
        reading_quotas=ReadingQuotas(),
        device_limits=RateLimiter(settings.device_rate_limit, settings.device_rate_burst),
        device_turns=DeviceTurns(
            settings.device_concurrent_requests, settings.device_waiting_requests
        ),
        key_limits=RateLimiter(settings.key_rate_limit, settings.key_rate_burst),
        recent=RecentEventIds(settings.recent_event_ids),
        metrics=IngestMetrics(registry),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        if ctx.keys is not None:
            assert db is not None
            await db[API_KEYS].create_index("hash", unique=True)
            await ctx.keys.start()
        if ctx.quotas is not None:
            await ctx.quotas.start()
        yield
        if ctx.quotas is not None:
            await ctx.quotas.stop()
        if ctx.keys is not None:
            await ctx.keys.stop()
        await publisher.stop()
        if mongo is not None:
            await mongo.close()

    app = FastAPI(
        title="Telemetry ingestion API",
        version="0.2.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # Operators watch Prometheus metrics, not OpenTelemetry; FastAPI's native
        # telemetry otherwise asks the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ingest = ctx
    install_error_handlers(app)
    app.add_middleware(ingest.DirectIngestRoutes, routes=ingest.router.routes)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    # Outside DirectIngestRoutes, so the ingest hot path's answers, log lines and
    # Kafka headers carry X-Request-ID too.
    add_request_id(app)
    add_metrics_route(app, registry)
    app.include_router(ingest.router)
    app.include_router(admin.router)

    @app.get("/", summary="Service banner", tags=["health"])
    async def root() -> dict[str, str]:
        """A short health message for API clients."""
        return {"service": "ingestion-api", "status": "ok", "docs": "/docs"}

    @app.get(
        "/health",
        tags=["health"],
        response_model=schemas.HealthOut,
        responses={503: {"model": schemas.HealthOut}},
    )
    async def health() -> JSONResponse:
        """200 when readings can be accepted; 503 while Kafka is unreachable."""
        ok = publisher.connected
        body = schemas.HealthOut(status="ok" if ok else "degraded", kafka=ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    return app
