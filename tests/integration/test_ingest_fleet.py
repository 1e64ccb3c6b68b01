"""Ingestion at fleet scale on a real Kafka (and MongoDB for keys): duplicates, keys, limits,
backpressure while Kafka is down, and a graceful stop that loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests
from aggregator_worker.worker import run as run_aggregator
from alerts_worker.worker import run as run_alerts
from integration.alerts_reference import alert_ids, expected_notifications
from integration.ingestion import ingestion_client
from integration.recompute import stored_rows
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.reading import decode_kafka_value
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics
from telemetry_common.infra.mongo import ALERTS, DEVICES, RAW
from telemetry_common.infra.settings import AggregatorSettings, AlertsSettings, IngestionSettings
from telemetry_tools import keys as keys_cli
from telemetry_tools.servers import KafkaServer, free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-" + "x7Rk2pQ9vL4mN8bT3wY6zA1c"


def reading(device: str, second: int, value: float = 21.5) -> dict:
    return {"device_id": device, "ts": f"2025-01-15T10:00:{second:02d}Z", "temperature_c": value}


async def test_duplicates_within_and_across_batches_reach_kafka_once(
    service_env: dict, topics: Topics
) -> None:
    first = [
        reading("d-1", 1),
        reading("d-1", 2),
        reading("d-1", 1),
        {"event_id": "x", **reading("d-2", 3)},
    ]
    retry = [reading("d-1", 2), {"event_id": "x", **reading("d-2", 3)}, reading("d-3", 4)]
    with ingestion_client(IngestionSettings(**service_env)) as client:
        one = client.post("/ingest/batch", json=first).json()
        two = client.post("/ingest/batch", json=retry).json()
        single_again = client.post("/ingest", json=reading("d-3", 4))

    assert [r["status"] for r in one["results"]] == ["stored", "stored", "duplicate", "stored"]
    assert [r["status"] for r in two["results"]] == ["duplicate", "duplicate", "stored"]
    assert single_again.status_code == 202
    assert single_again.json()["event_id"] == two["results"][2]["event_id"]
    records = await read_topic(
        service_env["kafka_bootstrap_servers"], topics.telemetry, expected=5, timeout_s=5
    )
    event_ids = [decode_kafka_value(r.value).event_id for r in records]
    assert len(event_ids) == 4 == len(set(event_ids))


async def test_keys_issued_bound_and_revoked_through_the_admin_api(
    service_env: dict, topics: Topics
) -> None:
    settings = IngestionSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    with ingestion_client(settings) as client:
        refused_admin = client.post(
            "/admin/keys", json={"name": "x"}, headers={"X-API-Key": "nope"}
        )
        issued = client.post(
            "/admin/keys",
            json={"name": "gateway 7", "devices": ["k-1"]},
            headers={"X-API-Key": ADMIN_KEY},
        )
        key = issued.json()["api_key"]
        missing = client.post("/ingest", json=reading("k-1", 1))
        # Another last character (a key that already ends in "A" must still change).
        wrong_key = key[:-1] + ("B" if key.endswith("A") else "A")
        wrong = client.post("/ingest", json=reading("k-1", 1), headers={"X-API-Key": wrong_key})
        allowed = client.post("/ingest", json=reading("k-1", 1), headers={"X-API-Key": key})
        other_device = client.post("/ingest", json=reading("k-2", 1), headers={"X-API-Key": key})
        mixed_batch = client.post(
            "/ingest/batch", json=[reading("k-1", 2), reading("k-2", 2)], headers={"X-API-Key": key}
        )
        listed = client.get("/admin/keys", headers={"X-API-Key": ADMIN_KEY})
        revoked = client.delete(
            f"/admin/keys/{issued.json()['key_id']}", headers={"X-API-Key": ADMIN_KEY}
        )
        after_revoke = client.post("/ingest", json=reading("k-1", 3), headers={"X-API-Key": key})

    assert refused_admin.status_code == 401
    assert issued.status_code == 201 and key.startswith("tk_")
    assert issued.json()["devices"] == ["k-1"]
    # Missing and wrong keys get the same answer: nothing to learn from probing.
    assert missing.status_code == wrong.status_code == 401
    assert (
        missing.json()
        == wrong.json()
        == {
            "detail": "X-API-Key: missing or not valid",
            "errors": [{"field": "X-API-Key", "reason": "missing or not valid"}],
        }
    )
    assert allowed.status_code == 202
    assert other_device.status_code == 403
    assert other_device.json()["errors"] == [
        {"field": "device_id", "reason": "this key may not post for k-2"}
    ]
    assert mixed_batch.status_code == 403
    assert listed.status_code == 200 and listed.json()["count"] == 1
    assert key not in listed.text and "hash" not in listed.text
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert after_revoke.status_code == 401
    records = await read_topic(
        service_env["kafka_bootstrap_servers"], topics.telemetry, expected=2, timeout_s=5
    )
    assert [r.key for r in records] == [b"k-1"]


def test_keys_cli_issues_lists_and_revokes(
    service_env: dict, capsys: pytest.CaptureFixture
) -> None:
    mongo = ["--mongo-url", service_env["mongo_url"], "--mongo-db", service_env["mongo_db"]]
    with pytest.raises(SystemExit) as issued:
        keys_cli.main([*mongo, "issue", "--name", "cli", "--devices", "c-1,c-2"])
    assert issued.value.code == 0
    record = orjson.loads(capsys.readouterr().out)
    assert record["devices"] == ["c-1", "c-2"] and record["api_key"].startswith("tk_")
    with pytest.raises(SystemExit):
        keys_cli.main([*mongo, "list"])
    listed = capsys.readouterr().out
    assert record["key_id"] in listed and record["api_key"] not in listed
    with pytest.raises(SystemExit) as revoked:
        keys_cli.main([*mongo, "revoke", record["key_id"]])
    assert revoked.value.code == 0
    assert orjson.loads(capsys.readouterr().out)["revoked_at"]
    with pytest.raises(SystemExit) as unknown:
        keys_cli.main([*mongo, "revoke", "000000000000"])
    assert unknown.value.code == 1


def test_limits_answer_413_and_429_with_clear_bodies(service_env: dict) -> None:
    settings = IngestionSettings(
        **service_env,
        max_batch_readings=3,
        device_rate_limit=1,
        device_rate_burst=2,
        max_body_bytes=2048,
    )
    with ingestion_client(settings) as client:
        too_many = client.post("/ingest/batch", json=[reading("l-1", i) for i in range(4)])
        too_big = client.post(
            "/ingest",
            content=b"[" + b" " * 4096 + b"]",
            headers={"Content-Type": "application/json"},
        )
        first = [client.post("/ingest", json=reading("flood", i)).status_code for i in range(2)]
        flooded = client.post("/ingest", json=reading("flood", 9))
        others = client.post("/ingest", json=reading("quiet", 1))

    assert too_many.status_code == 413
    assert too_many.json()["errors"] == [
        {"field": "body", "reason": "4 readings; at most 3 per batch"}
    ]
    assert too_big.status_code == 413
    assert too_big.json()["errors"][0]["reason"] == "request body is larger than 2048 bytes"
    assert first == [202, 202]
    assert flooded.status_code == 429
    assert int(flooded.headers["Retry-After"]) >= 1
    assert flooded.json()["errors"][0]["field"] == "device_id"
    assert "over 1 readings/s" in flooded.json()["errors"][0]["reason"]
    assert others.status_code == 202


def test_kafka_down_answers_503_at_once_and_recovers_losing_nothing(tmp_path: Path) -> None:
    kafka = KafkaServer(tmp_path / "kafka", free_port(), free_port(), heap="512m")
    kafka.start()
    topic = "telemetry.raw.outage"
    try:
        asyncio.run(ensure_topics(kafka.bootstrap_servers, [TopicSpec(topic, 3, {})]))
        settings = IngestionSettings(
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            telemetry_topic=topic,
            kafka_send_timeout_s=2.0,
            retry_after_s=2,
        )
        acknowledged: list[str] = []
        with ingestion_client(settings) as client:

            def post(second: int) -> requests.Response:
                response = client.post("/ingest", json=reading("o-1", second))
                if response.status_code == 202:
                    acknowledged.append(response.json()["event_id"])
                return response

            assert post(0).status_code == 202
            kafka.stop()
            during = [post(s) for s in range(1, 6)]
            health_during = client.get("/health").status_code
            kafka.start()
            deadline = time.monotonic() + 60
            second = 6
            while post(second).status_code != 202:
                assert time.monotonic() < deadline, "never recovered after Kafka came back"
                second += 1
                time.sleep(0.5)
            after = [post(s).status_code for s in range(40, 45)]

        assert [r.status_code for r in during] == [503] * 5
        assert all(r.headers["Retry-After"] == "2" for r in during)
        assert all(r.json()["errors"][0]["field"] == "kafka" for r in during)
        assert health_during == 503
        assert after == [202] * 5
        records = asyncio.run(
            read_topic(kafka.bootstrap_servers, topic, expected=len(acknowledged) + 10, timeout_s=5)
        )
        on_topic = {decode_kafka_value(r.value).event_id for r in records}
        assert set(acknowledged) <= on_topic, "an acknowledged reading is missing"
    finally:
        kafka.stop()


def test_sigterm_finishes_in_flight_requests_and_loses_nothing_acknowledged(
    service_env: dict, topics: Topics, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": service_env["kafka_bootstrap_servers"],
        "TELEMETRY_TOPIC": topics.telemetry,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    log_path = tmp_path / "ingestion.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ingestion_api"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(base + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "ingestion API did not start"
        time.sleep(0.1)

    acknowledged: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        session = requests.Session()
        for i in range(10_000):
            body = [reading(f"t-{worker}", i % 60, float(i)) for _ in range(1)]
            body[0]["event_id"] = f"w{worker}-{i}"
            try:
                response = session.post(base + "/ingest/batch", json=body, timeout=10)
            except requests.RequestException:
                return
            if response.status_code == 200:
                with lock:
                    acknowledged.extend(r["event_id"] for r in response.json()["results"])

    workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises SIGTERM once it has shut down cleanly, so the status is -SIGTERM.
    assert process.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log_path.read_text()
    for w in workers:
        w.join(30)

    assert len(acknowledged) > 0
    records = asyncio.run(
        read_topic(
            service_env["kafka_bootstrap_servers"],
            topics.telemetry,
            expected=len(acknowledged),
            timeout_s=15,
        )
    )
    on_topic = {decode_kafka_value(r.value).event_id for r in records}
    assert set(acknowledged) <= on_topic


async def test_retries_however_they_interleave_are_stored_and_counted_once(
    service_env: dict, topics: Topics, db: AsyncDatabase
) -> None:
    """Every retry reaches Kafka here (no recent-id memory): the workers must still count once."""
    readings = [reading(f"r-{i % 5}", i, 60.0 if i % 7 == 0 else 20.0 + i) for i in range(40)]
    rng = random.Random(11)
    with ingestion_client(IngestionSettings(**service_env, recent_event_ids=0)) as client:
        for attempt in range(3):
            order = readings[:]
            rng.shuffle(order)
            cut = rng.randrange(1, len(order))
            # Some as single posts, the rest as two batches of different shapes.
            for body in order[:cut] if attempt == 1 else []:
                assert client.post("/ingest", json=body).status_code == 202
            rest = order[cut:] if attempt == 1 else order
            half = len(rest) // 2
            for batch in (rest[:half], rest[half:]):
                if batch:
                    assert client.post("/ingest/batch", json=batch).status_code == 200

    bootstrap = service_env["kafka_bootstrap_servers"]
    records = await read_topic(bootstrap, topics.telemetry, expected=3 * len(readings))
    records.sort(key=lambda r: (r.partition, r.offset))  # one device's order is its partition's
    arrival = [decode_kafka_value(r.value) for r in records]
    # Alerts: one per incident, as if each reading had arrived once (its first copy).
    expected = expected_notifications(arrival)
    hot_devices = {r["device_id"] for r in readings if r["temperature_c"] > 50}
    assert len(alert_ids(expected, "fired")) >= len(hot_devices)

    aggregator = AggregatorSettings(**service_env, port=free_port(), consumer_group="agg-retries")
    alerts = AlertsSettings(**service_env, port=free_port(), consumer_group="alerts-retries")
    async with running(run_aggregator, aggregator), running(run_alerts, alerts) as registry:

        async def all_counted() -> bool:
            rollups = await stored_rows(db, "1m", "temperature_c")
            return sum(r["count"] for r in rollups) >= len(readings) and metric_value(
                registry, "alerts_readings_evaluated_total"
            ) == len(records)

        await eventually(all_counted)
        await asyncio.sleep(2)  # a double count would land after the first

    assert await db[RAW].count_documents({}) == len(readings)
    rollups = await stored_rows(db, "1m", "temperature_c")
    assert sum(r["count"] for r in rollups) == len(readings)
    assert sum(r["sum"] for r in rollups) == pytest.approx(
        sum(r["temperature_c"] for r in readings)
    )
    devices = await db[DEVICES].find({}).to_list()
    assert sum(d["reading_count"] for d in devices) == len(readings)
    stored = {doc["_id"]: doc["status"] async for doc in db[ALERTS].find({})}
    assert set(stored) == alert_ids(expected, "fired")
    assert {a for a, status in stored.items() if status == "resolved"} == alert_ids(
        expected, "resolved"
    )
