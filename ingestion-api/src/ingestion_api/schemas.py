"""Request and response shapes, for OpenAPI. A reading's schema comes from the parser
(telemetry_common.domain.reading), which gives field-by-field errors pydantic alone could
not (any numeric top-level field is a metric)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from telemetry_common.domain.reading import reading_json_schema
from telemetry_common.http.api_errors import ErrorOut, FieldErrorOut

FLAT_EXAMPLE = {
    "device_id": "dev-1",
    "ts": "2025-01-15T10:00:00Z",
    "temperature_c": 25.5,
    "humidity": 60.0,
    "lat": 32.1,
    "lon": 34.9,
}
GENERAL_EXAMPLE = {
    "event_id": "e001",
    "device_id": "dev-1",
    "ts": "2025-01-15T10:00:00Z",
    "metrics": {"temp": 34.2, "cpu": 0.44},
    "tags": ["room:101"],
}


class QueuedOut(BaseModel):
    status: Literal["queued"] = "queued"
    device_id: str = Field(examples=["dev-1"])
    event_id: str = Field(examples=["e001"])


class BatchItemOut(BaseModel):
    index: int = Field(description="position of the reading in the request")
    status: Literal["stored", "duplicate", "invalid"]
    event_id: str | None = None
    device_id: str | None = None
    errors: list[FieldErrorOut] | None = None


class BatchOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "stored": 1,
                    "duplicate": 1,
                    "invalid": 1,
                    "results": [
                        {"index": 0, "status": "stored", "event_id": "e001", "device_id": "dev-1"},
                        {
                            "index": 1,
                            "status": "duplicate",
                            "event_id": "e001",
                            "device_id": "dev-1",
                        },
                        {
                            "index": 2,
                            "status": "invalid",
                            "errors": [{"field": "device_id", "reason": "is required"}],
                        },
                    ],
                }
            ]
        }
    )

    stored: int
    duplicate: int
    invalid: int
    results: list[BatchItemOut]


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    service: str = "ingestion-api"
    kafka: bool = Field(description="connected to Kafka")


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "Body is not valid JSON (or gzip)"},
    413: {"model": ErrorOut, "description": "Body or batch larger than the configured limit"},
    415: {"model": ErrorOut, "description": "Unsupported Content-Type or Content-Encoding"},
    422: {
        "model": ErrorOut,
        "description": "A field is wrong; `errors` names each field and the reason",
        "content": {
            "application/json": {
                "example": {
                    "detail": "device_id: is required; temperature_c: must be a finite number",
                    "errors": [
                        {"field": "device_id", "reason": "is required"},
                        {"field": "temperature_c", "reason": "must be a finite number"},
                    ],
                }
            }
        },
    },
    401: {
        "model": ErrorOut,
        "description": "API keys are required and X-API-Key is missing or not valid",
        "content": {
            "application/json": {
                "example": {
                    "detail": "X-API-Key: missing or not valid",
                    "errors": [{"field": "X-API-Key", "reason": "missing or not valid"}],
                }
            }
        },
    },
    403: {
        "model": ErrorOut,
        "description": "The key is bound to other devices",
        "content": {
            "application/json": {
                "example": {
                    "detail": "device_id: this key may not post for dev-2",
                    "errors": [{"field": "device_id", "reason": "this key may not post for dev-2"}],
                }
            }
        },
    },
    429: {
        "model": ErrorOut,
        "description": "A device or the key is over its rate, the key's project over its "
        "readings/s quota (`project_id`), or the device already has "
        "DEVICE_WAITING_REQUESTS requests waiting; retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
    503: {
        "model": ErrorOut,
        "description": "Kafka is unreachable or the producer is saturated; nothing was "
        "acknowledged. Retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}

NDJSON_EXAMPLE = (
    '{"device_id": "dev-1", "temperature_c": 21.5}\n{"device_id": "dev-2", "humidity": 40}\n'
)


def single_request_body() -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": reading_json_schema(),
                    "examples": {
                        "flat": {"summary": "Flat form", "value": FLAT_EXAMPLE},
                        "general": {"summary": "General form", "value": GENERAL_EXAMPLE},
                    },
                }
            },
        }
    }


def batch_request_body() -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "description": "A JSON array or NDJSON; `Content-Encoding: gzip` is accepted",
            "content": {
                "application/json": {
                    "schema": {"type": "array", "items": reading_json_schema()},
                    "example": [FLAT_EXAMPLE, GENERAL_EXAMPLE],
                },
                "application/x-ndjson": {"schema": {"type": "string"}, "example": NDJSON_EXAMPLE},
            },
        }
    }


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["greenhouse gateway 7"])
    devices: list[str] | None = Field(
        None,
        max_length=10_000,
        description="the only devices this key may post for; absent means any device",
        examples=[["dev-1", "dev-2"]],
    )


class KeyOut(BaseModel):
    key_id: str = Field(examples=["3f9c2a1b7d4e"])
    name: str = Field(examples=["greenhouse gateway 7"])
    devices: list[str] | None = Field(None, examples=[["dev-1", "dev-2"]])
    created_at: str = Field(examples=["2025-01-15T10:00:00Z"])
    revoked_at: str | None = Field(None, examples=[None])


class KeyIssuedOut(KeyOut):
    api_key: str = Field(
        description="the key itself: shown this once, stored only as a hash",
        examples=["tk_3f9c2a1b7d4e_q0H7xq3kz9Yw2v8pR1tL5mN4bC6dE0fG7hJ8kL9zX2c"],
    )


class KeysOut(BaseModel):
    data: list[KeyOut]
    count: int
