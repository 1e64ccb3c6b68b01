"""The ingestion API: FastAPI app, its lifespan and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter
from telemetry_common.api_errors import ApiError, install_error_handlers
from telemetry_common.http_metrics import RequestMetricsMiddleware
from telemetry_common.metrics import add_metrics_route, new_registry
from telemetry_common.reading import InvalidReading, Reading, parse_reading
from telemetry_common.request_id import RequestIdMiddleware
from telemetry_common.settings import IngestionSettings
from telemetry_common.timefmt import utcnow

from ingestion_api import schemas
from ingestion_api.body import parse_json, parse_ndjson, read_limited, require_json_content_type
from ingestion_api.publish import KafkaUnavailable, ReadingPublisher

JSON_TYPES = ("application/json",)
BATCH_TYPES = ("application/json", "application/x-ndjson")


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.readings = Counter(
            "ingest_readings_total",
            "Readings received, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.kafka_unavailable = Counter(
            "ingest_kafka_unavailable_total",
            "Requests answered 503 because Kafka did not acknowledge",
            registry=registry,
        )


def create_app(settings: IngestionSettings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or new_registry()
    metrics = IngestMetrics(registry)
    publisher = ReadingPublisher(
        settings.kafka_bootstrap_servers, settings.telemetry_topic, settings.kafka_send_timeout_s
    )
    max_skew = timedelta(seconds=settings.max_future_skew_s)
    retry_after = {"Retry-After": str(settings.retry_after_s)}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.stop()

    app = FastAPI(
        title="Telemetry ingestion API",
        version="0.1.0",
        description="Devices post readings here. A 2xx means the reading is durable in Kafka.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, registry=registry)
    # Added last, so outermost: every response and log line carries X-Request-ID.
    app.add_middleware(RequestIdMiddleware)
    add_metrics_route(app, registry)

    async def publish_or_503(readings: list[Reading]) -> None:
        try:
            await publisher.publish(readings)
        except KafkaUnavailable as exc:
            metrics.kafka_unavailable.inc()
            raise ApiError(503, "kafka", str(exc), headers=retry_after) from None

    @app.get("/", summary="Service banner")
    async def root() -> dict[str, str]:
        """A short health message for API clients."""
        return {"service": "ingestion-api", "status": "ok", "docs": "/docs"}

    @app.get(
        "/health", response_model=schemas.HealthOut, responses={503: {"model": schemas.HealthOut}}
    )
    async def health() -> JSONResponse:
        """200 when readings can be accepted; 503 while Kafka is unreachable."""
        ok = publisher.connected
        body = schemas.HealthOut(status="ok" if ok else "degraded", kafka=ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.post(
        "/ingest",
        status_code=202,
        response_model=schemas.QueuedOut,
        responses=schemas.ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": schemas.ReadingIn.model_json_schema(),
                        "examples": {
                            "flat": {"summary": "Flat form", "value": schemas.FLAT_EXAMPLE},
                            "general": {
                                "summary": "General form",
                                "value": schemas.GENERAL_EXAMPLE,
                            },
                        },
                    }
                },
            }
        },
    )
    async def ingest(request: Request) -> schemas.QueuedOut:
        """Accept one reading; answers after Kafka acknowledged it."""
        require_json_content_type(request, JSON_TYPES)
        body = parse_json(await read_limited(request, settings.max_body_bytes))
        try:
            reading = parse_reading(body, now=utcnow(), max_future_skew=max_skew)
        except InvalidReading as exc:
            metrics.readings.labels("invalid").inc()
            raise ApiError(422, "", "", errors=exc.errors) from None
        await publish_or_503([reading])
        metrics.readings.labels("accepted").inc()
        return schemas.QueuedOut(device_id=reading.device_id, event_id=reading.event_id)

    @app.post(
        "/ingest/batch",
        response_model=schemas.BatchOut,
        responses={
            **schemas.ERROR_RESPONSES,
            422: {"model": schemas.BatchOut, "description": "Every reading was invalid"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "array", "items": schemas.ReadingIn.model_json_schema()},
                        "example": [schemas.FLAT_EXAMPLE, schemas.GENERAL_EXAMPLE],
                    },
                    "application/x-ndjson": {
                        "schema": {"type": "string"},
                        "example": '{"device_id": "dev-1", "temperature_c": 21.5}\n'
                        '{"device_id": "dev-2", "humidity": 40}\n',
                    },
                },
            }
        },
    )
    async def ingest_batch(request: Request) -> JSONResponse:
        """Accept up to MAX_BATCH_READINGS readings; each gets its own result."""
        media_type = require_json_content_type(request, BATCH_TYPES)
        raw = await read_limited(request, settings.max_body_bytes)
        items = parse_ndjson(raw) if media_type == "application/x-ndjson" else parse_json(raw)
        if not isinstance(items, list):
            raise ApiError(422, "body", "must be a JSON array of readings")
        if len(items) > settings.max_batch_readings:
            raise ApiError(
                413,
                "body",
                f"{len(items)} readings; at most {settings.max_batch_readings} per batch",
            )
        now = utcnow()
        results: list[schemas.BatchItemOut] = []
        accepted: list[Reading] = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            try:
                reading = parse_reading(item, now=now, max_future_skew=max_skew)
            except InvalidReading as exc:
                results.append(
                    schemas.BatchItemOut(
                        index=index,
                        status="invalid",
                        errors=[schemas.FieldErrorOut(**e.as_dict()) for e in exc.errors],
                    )
                )
                continue
            status = "duplicate" if reading.event_id in seen else "stored"
            if status == "stored":
                seen.add(reading.event_id)
                accepted.append(reading)
            results.append(
                schemas.BatchItemOut(
                    index=index,
                    status=status,
                    event_id=reading.event_id,
                    device_id=reading.device_id,
                )
            )
        if accepted:
            await publish_or_503(accepted)
        counts = {
            s: sum(1 for r in results if r.status == s) for s in ("stored", "duplicate", "invalid")
        }
        for outcome, count in counts.items():
            metrics.readings.labels("accepted" if outcome == "stored" else outcome).inc(count)
        out = schemas.BatchOut(results=results, **counts)
        status_code = 422 if items and counts["invalid"] == len(items) else 200
        return JSONResponse(out.model_dump(exclude_none=True), status_code=status_code)

    return app
