"""The reading schema in the OpenAPI document says what the parser accepts and refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ingestion_api.app import create_app
from ingestion_api.schemas import FLAT_EXAMPLE, GENERAL_EXAMPLE
from jsonschema import Draft202012Validator
from telemetry_common.domain.reading import (
    MAX_METRICS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    InvalidReading,
    parse_reading,
    reading_json_schema,
)
from telemetry_common.infra.settings import IngestionSettings

NOW = datetime(2025, 1, 15, 10, 5, tzinfo=UTC)
VALIDATOR = Draft202012Validator(reading_json_schema())


def refused_fields(body: dict[str, Any]) -> set[str]:
    try:
        parse_reading(body, now=NOW, max_future_skew=None)
    except InvalidReading as exc:
        return {error.field for error in exc.errors}
    return set()


@pytest.mark.parametrize("body", [FLAT_EXAMPLE, GENERAL_EXAMPLE])
def test_the_documented_examples_are_valid_for_both(body: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(body)) == []
    assert refused_fields(body) == set()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"temperature_c": 1.0}, "device_id"),
        ({"device_id": "dev 1", "temperature_c": 1.0}, "device_id"),
        ({"device_id": "dev-1", "event_id": "", "temperature_c": 1.0}, "event_id"),
        ({"device_id": "dev-1", "temperature_c": "hot"}, "temperature_c"),
        ({"device_id": "dev-1", "9lives": 1.0}, "9lives"),
        ({"device_id": "dev-1", "metrics": {"9lives": 1.0}}, "metrics.9lives"),
        (
            {"device_id": "dev-1", "metrics": {f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}},
            "metrics",
        ),
        ({"device_id": "dev-1", "t": 1.0, "tags": ["a"] * (MAX_TAGS + 1)}, "tags"),
        ({"device_id": "dev-1", "t": 1.0, "tags": ["x" * (MAX_TAG_LENGTH + 1)]}, "tags[0]"),
        ({"device_id": "dev-1", "t": 1.0, "lat": 91.0}, "lat"),
        ({"device_id": "dev-1", "t": 1.0, "lon": -180.5}, "lon"),
    ],
)
def test_what_the_schema_refuses_the_parser_refuses_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    assert list(VALIDATOR.iter_errors(body)), "the schema lets it through"
    assert field in refused_fields(body)


def test_the_ingest_routes_document_the_parser_schema() -> None:
    # The document needs no Kafka: the app is not started.
    settings = IngestionSettings(kafka_bootstrap_servers="127.0.0.1:1")
    document = TestClient(create_app(settings)).get("/openapi.json").json()
    single = document["paths"]["/ingest"]["post"]["requestBody"]["content"]["application/json"]
    batch = document["paths"]["/ingest/batch"]["post"]["requestBody"]["content"]
    assert single["schema"] == reading_json_schema()
    assert batch["application/json"]["schema"]["items"] == reading_json_schema()
