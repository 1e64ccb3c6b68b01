"""The ingestion API against a real Kafka: a 2xx means the reading is on telemetry.raw."""

from __future__ import annotations

import gzip

import orjson
import pytest
from fastapi.testclient import TestClient
from ingestion_api import schemas
from ingestion_api.app import create_app
from integration.ingestion import ingestion_client
from telemetry_common.infra.kafka.readings import PROJECT_HEADER, REQUEST_ID_HEADER, decode_reading
from telemetry_common.infra.settings import IngestionSettings
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, read_topic

pytestmark = pytest.mark.integration


async def test_posted_reading_is_on_the_topic_keyed_by_device(
    service_env: dict, topics: Topics
) -> None:
    with ingestion_client(IngestionSettings(**service_env)) as client:
        response = client.post(
            "/ingest",
            json={
                "device_id": "dev-1",
                "ts": "2025-01-15T10:00:00Z",
                "temperature_c": 25.5,
                "humidity": 60.0,
            },
            headers={"X-Request-ID": "gateway-7:1"},
        )
        general = client.post(
            "/ingest",
            json={
                "event_id": "e001",
                "device_id": "dev-2",
                "metrics": {"temp": 34.2},
                "tags": ["room:101"],
            },
        )
    assert response.status_code == 202
    assert schemas.QueuedOut.model_validate(response.json()).model_dump() == response.json()
    assert response.json()["status"] == "queued"
    assert response.json()["device_id"] == "dev-1"
    assert general.status_code == 202
    records = await read_topic(service_env["kafka_bootstrap_servers"], topics.telemetry, expected=2)
    by_key = {r.key: decode_reading(r) for r in records}
    assert set(by_key) == {b"dev-1", b"dev-2"}
    # Without keys every reading is the default project's, and says so in a header.
    assert all(dict(r.headers)[PROJECT_HEADER] == b"default" for r in records)
    assert {r.project_id for r in by_key.values()} == {"default"}
    # Each reading carries its request's id, the client's or the one made for it.
    request_ids = {r.key: dict(r.headers)[REQUEST_ID_HEADER] for r in records}
    assert response.headers["X-Request-ID"] == "gateway-7:1"
    assert request_ids == {
        b"dev-1": b"gateway-7:1",
        b"dev-2": general.headers["X-Request-ID"].encode(),
    }
    flat = by_key[b"dev-1"]
    assert flat.metrics == {"temperature_c": 25.5, "humidity": 60.0}
    assert flat.event_id == response.json()["event_id"]
    assert by_key[b"dev-2"].event_id == "e001"
    assert by_key[b"dev-2"].tags == ("room:101",)


async def test_batch_accepts_the_valid_readings_and_names_each_invalid_one(
    service_env: dict, topics: Topics
) -> None:
    batch = [
        {"device_id": "b-1", "ts": "2025-01-15T10:00:00Z", "temperature_c": 20.0},
        {"device_id": "b-1", "ts": "2025-01-15T10:00:00Z", "temperature_c": 20.0},
        {"temperature_c": 20.0},
        {"device_id": "b-2", "humidity": "wet"},
        {"event_id": "b-e", "device_id": "b-3", "metrics": {"cpu": 0.5}},
    ]
    with ingestion_client(IngestionSettings(**service_env)) as client:
        response = client.post(
            "/ingest/batch",
            content=gzip.compress(orjson.dumps(batch)),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        ndjson = client.post(
            "/ingest/batch",
            content=b'{"device_id": "n-1", "humidity": 41}\n{"device_id": "n-2", "humidity": 42}\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
    assert response.status_code == 200
    body = response.json()
    # The body is what the OpenAPI docs promise (the endpoint writes it without the model).
    assert schemas.BatchOut.model_validate(body).model_dump(exclude_none=True) == body
    assert (body["stored"], body["duplicate"], body["invalid"]) == (2, 1, 2)
    assert [r["status"] for r in body["results"]] == [
        "stored",
        "duplicate",
        "invalid",
        "invalid",
        "stored",
    ]
    assert body["results"][2]["errors"] == [{"field": "device_id", "reason": "is required"}]
    assert body["results"][3]["errors"][0]["field"] == "humidity"
    assert ndjson.status_code == 200 and ndjson.json()["stored"] == 2
    records = await read_topic(service_env["kafka_bootstrap_servers"], topics.telemetry, expected=4)
    assert sorted(r.key for r in records) == [b"b-1", b"b-3", b"n-1", b"n-2"]


def test_kafka_unreachable_answers_503_with_retry_after_never_2xx() -> None:
    settings = IngestionSettings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}", kafka_send_timeout_s=1.0
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/ingest", json={"device_id": "dev-1", "temperature_c": 25.5})
        health = client.get("/health")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.retry_after_s)
    assert response.json()["errors"][0]["field"] == "kafka"
    assert health.status_code == 503
    assert health.json()["kafka"] is False


async def test_a_devices_readings_share_one_partition_whichever_endpoint_took_them(
    service_env: dict, topics: Topics
) -> None:
    # Batches are published a record batch per partition, singles one send each;
    # both must pick the partition the device id hashes to, or a device's readings
    # would be consumed out of order.
    devices = [f"part-{i}" for i in range(12)]

    def body(device: str, minute: int) -> dict:
        return {"device_id": device, "ts": f"2025-01-15T10:{minute:02d}:00Z", "temp": 1.0}

    with ingestion_client(IngestionSettings(**service_env)) as client:
        batch = client.post("/ingest/batch", json=[body(d, 0) for d in devices])
        singles = [client.post("/ingest", json=body(d, 1)) for d in devices]
    assert batch.status_code == 200 and batch.json()["stored"] == len(devices)
    assert all(s.status_code == 202 for s in singles)
    records = await read_topic(
        service_env["kafka_bootstrap_servers"], topics.telemetry, expected=2 * len(devices)
    )
    partitions_by_device: dict[bytes, set[int]] = {}
    for record in records:
        partitions_by_device.setdefault(record.key, set()).add(record.partition)
    assert len(records) == 2 * len(devices)
    assert all(len(p) == 1 for p in partitions_by_device.values()), partitions_by_device
    # The devices do spread over the topic's partitions: the check above means something.
    assert len(set().union(*partitions_by_device.values())) > 1
