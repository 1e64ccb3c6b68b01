"""Request and response shapes, for OpenAPI: the readings themselves are parsed in
telemetry_common.reading, which gives field-by-field errors pydantic alone could not
(any numeric top-level field is a metric)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ReadingIn(BaseModel):
    """A reading in the flat form (metrics as top-level numbers) or the general form."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "additionalProperties": {"type": "number", "description": "a metric (flat form)"}
        },
    )

    device_id: str = Field(pattern=r"^[A-Za-z0-9\-_.:]{1,128}$", examples=["dev-1"])
    ts: str | None = Field(
        None,
        description="ISO 8601; no offset means UTC; server time when absent",
        examples=["2025-01-15T10:00:00Z"],
    )
    event_id: str | None = Field(
        None,
        description="makes the reading idempotent; derived from device_id, ts and values "
        "when absent and ts is given",
    )
    metrics: dict[str, float] | None = Field(None, description="general form: metric -> number")
    tags: list[str] | None = Field(None, max_length=64)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)


class FieldErrorOut(BaseModel):
    field: str = Field(examples=["temperature_c"])
    reason: str = Field(examples=["must be a finite number"])


class ErrorOut(BaseModel):
    detail: str = Field(examples=["temperature_c: must be a finite number"])
    errors: list[FieldErrorOut]


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
    503: {
        "model": ErrorOut,
        "description": "Kafka did not acknowledge; retry after Retry-After seconds",
    },
}
