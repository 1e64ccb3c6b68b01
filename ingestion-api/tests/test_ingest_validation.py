"""What the ingestion API refuses, and how: every refusal is answered before Kafka is involved.

The app here points at a Kafka that does not exist, so a refusal that reached the
producer would show as 503, not as the 4xx asserted.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from ingestion_api.app import create_app
from telemetry_common.infra.settings import IngestionSettings
from telemetry_tools.servers import free_port


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = IngestionSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        max_body_bytes=4096,
        max_batch_readings=3,
        kafka_send_timeout_s=0.5,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("body", "field", "reason_part"),
    [
        ({"temperature_c": 1.0}, "device_id", "required"),
        ({"device_id": {"$ne": None}, "temperature_c": 1.0}, "device_id", "string"),
        ({"device_id": "a b", "temperature_c": 1.0}, "device_id", "letters, digits"),
        ({"device_id": "dev-1"}, "metrics", "at least one"),
        ({"device_id": "dev-1", "temperature_c": "hot"}, "temperature_c", "finite number"),
        ({"device_id": "dev-1", "temperature_c": 1.0, "ts": "yesterday"}, "ts", "ISO 8601"),
        ({"device_id": "dev-1", "temperature_c": 1.0, "ts": {"$gt": ""}}, "ts", "ISO 8601"),
        ({"device_id": "dev-1", "temperature_c": 1.0, "ts": "2999-01-01T00:00:00Z"}, "ts", "ahead"),
        ({"device_id": "dev-1", "metrics": {"$where": 1}}, "metrics.$where", "metric names"),
    ],
)
def test_bad_reading_is_refused_with_the_field_and_reason(
    client: TestClient, body: dict, field: str, reason_part: str
) -> None:
    response = client.post("/ingest", json=body)
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert any(e["field"] == field and reason_part in e["reason"] for e in errors), errors
    assert field in response.json()["detail"]


def test_non_finite_numbers_in_raw_json_are_refused(client: TestClient) -> None:
    response = client.post(
        "/ingest",
        content=b'{"device_id": "dev-1", "temperature_c": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "body"


def test_oversized_body_gets_413(client: TestClient) -> None:
    body = orjson.dumps({"device_id": "dev-1", "temperature_c": 1.0, "tags": ["x" * 100] * 50})
    response = client.post("/ingest", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "4096" in response.json()["detail"]


def test_gzip_bomb_is_refused_without_inflating_it(client: TestClient) -> None:
    bomb = gzip.compress(b"[" + b" " * 3_000_000 + b"]", compresslevel=9)
    assert len(bomb) < 4096
    response = client.post(
        "/ingest/batch",
        content=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 413


def test_batch_over_the_reading_limit_names_the_limit(client: TestClient) -> None:
    batch = [{"device_id": f"d{i}", "humidity": 1} for i in range(4)]
    response = client.post("/ingest/batch", json=batch)
    assert response.status_code == 413
    assert "at most 3" in response.json()["detail"]


def test_batch_of_only_invalid_readings_is_422_with_per_reading_errors(client: TestClient) -> None:
    response = client.post("/ingest/batch", json=[{"humidity": 1}, {"device_id": "d"}])
    assert response.status_code == 422
    body = response.json()
    assert body["invalid"] == 2 and body["stored"] == 0
    assert body["results"][0]["errors"] == [{"field": "device_id", "reason": "is required"}]


def test_batch_must_be_an_array(client: TestClient) -> None:
    response = client.post("/ingest/batch", json={"device_id": "dev-1", "humidity": 1})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/ingest", content=b"device_id=dev-1", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["errors"][0]["field"] == "Content-Type"


def test_openapi_documents_every_endpoint_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ingest = spec["paths"]["/ingest"]["post"]
    assert set(ingest["requestBody"]["content"]["application/json"]["examples"]) == {
        "flat",
        "general",
    }
    assert {"202", "413", "422", "503"} <= set(ingest["responses"])
    batch = spec["paths"]["/ingest/batch"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(batch)
    assert {"401", "403", "429"} <= set(ingest["responses"])
    assert "Retry-After" in ingest["responses"]["429"]["headers"]


def test_openapi_documents_the_admin_key_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"post", "get"} <= set(paths["/admin/keys"])
    assert "delete" in paths["/admin/keys/{key_id}"]
    assert "401" in paths["/admin/keys"]["post"]["responses"]


def test_admin_endpoints_refuse_everyone_when_no_admin_key_is_configured(
    client: TestClient,
) -> None:
    response = client.get("/admin/keys", headers={"X-API-Key": "anything-at-all"})
    assert response.status_code == 401
    assert response.json()["errors"] == [{"field": "X-API-Key", "reason": "missing or not valid"}]


def test_ingest_refusals_carry_the_request_id_and_are_counted_under_their_route(
    client: TestClient,
) -> None:
    # The ingest endpoints are served past the framework's router (DirectIngestRoutes):
    # what the middlewares around them give every answer must still hold.
    response = client.post(
        "/ingest", json={"temperature_c": 1.0}, headers={"X-Request-ID": "trace-direct-1"}
    )
    assert response.status_code == 422
    assert response.headers["X-Request-ID"] == "trace-direct-1"
    batch = client.post("/ingest/batch", content=b"[", headers={"X-Request-ID": "trace-direct-2"})
    assert batch.status_code == 400
    assert batch.headers["X-Request-ID"] == "trace-direct-2"
    metrics = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/ingest",status="422"}' in metrics
    assert 'http_requests_total{method="POST",route="/ingest/batch",status="400"}' in metrics


def test_other_methods_on_the_ingest_paths_get_the_routers_answers(client: TestClient) -> None:
    assert client.get("/ingest").status_code == 405
    assert client.put("/ingest/batch", json=[]).status_code == 405


def test_ingest_behind_a_root_path_answers_through_the_routers_the_same_way() -> None:
    # Under a root_path the paths do not match DirectIngestRoutes; FastAPI's own
    # routing serves them, with the same refusal body.
    settings = IngestionSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_send_timeout_s=0.5
    )
    with TestClient(create_app(settings), root_path="/api") as prefixed:
        response = prefixed.post("/api/ingest", json={"temperature_c": 1.0})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "device_id", "reason": "is required"}]
