"""/stats against real Kafka and MongoDB: consumer lag, DLQ size and ingest rate from offsets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.infra.mongo import DEVICES, RAW
from telemetry_common.infra.settings import DashboardSettings
from telemetry_common.infra.tenancy import PROJECTS
from telemetry_tools.servers import KafkaServer, free_port
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def groups(topics: Topics) -> tuple[str, str]:
    # Consumer groups are broker-wide: named after this test's topics, they are its own.
    return f"reader.{topics.telemetry}", f"idle.{topics.telemetry}"


@pytest.fixture
def api(service_env: dict[str, Any], groups: tuple[str, str]) -> Iterator[TestClient]:
    settings = DashboardSettings(
        **service_env, stats_refresh_s=0.2, stats_consumer_groups=",".join(groups)
    )
    with TestClient(create_app(settings)) as client:
        yield client


async def send(producer: AIOKafkaProducer, topic: str, count: int) -> None:
    for i in range(count):
        await producer.send(topic, b'{"n": %d}' % i, partition=0)
    await producer.flush()


async def commit(kafka: KafkaServer, group: str, partition: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.commit({partition: offset})
    finally:
        await consumer.stop()


async def stats_when(api: TestClient, check: Any) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def holds() -> bool:
        response = api.get("/stats")
        assert response.status_code == 200, response.text
        latest.update(response.json())
        return bool(check(latest))

    await eventually(holds, timeout_s=30)
    return latest


async def test_lag_per_group_dlq_size_and_ingest_rate(
    api: TestClient,
    producer: AIOKafkaProducer,
    topics: Topics,
    groups: tuple[str, str],
    kafka_server: KafkaServer,
    db: AsyncDatabase,
) -> None:
    reader, idle = groups
    await send(producer, topics.telemetry, 5)
    await send(producer, topics.dlq, 2)
    await commit(kafka_server, reader, TopicPartition(topics.telemetry, 0), 2)

    stats = await stats_when(api, lambda s: s["consumer_lag"] == {reader: 3, idle: 5})
    assert (stats["kafka_reachable"], stats["dlq_size"]) == (True, 2)

    # Records written since the first snapshot make the rate over the last minute positive.
    await send(producer, topics.telemetry, 4)
    stats = await stats_when(api, lambda s: s["consumer_lag"] == {reader: 7, idle: 9})
    assert stats["ingest_rate_per_s"] > 0

    await db[RAW].insert_one({"_id": "e1", "device_id": "d", "metrics": {"t": 1.0}})
    stats = await stats_when(api, lambda s: s["total_readings"] == 1)
    assert stats["as_of"] == stats["generated_at"] and stats["as_of"].endswith("Z")


async def test_without_kafka_the_stored_figures_are_still_served(
    service_env: dict[str, Any], db: AsyncDatabase
) -> None:
    await db[RAW].insert_one({"_id": "e1", "device_id": "d", "metrics": {"t": 1.0}})
    settings = DashboardSettings(
        **{**service_env, "kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"},
        stats_refresh_s=0.2,
    )
    with TestClient(create_app(settings)) as api:
        stats = api.get("/stats").json()
    assert (stats["total_readings"], stats["kafka_reachable"]) == (1, False)
    assert stats["consumer_lag"] is None and stats["dlq_size"] is None
    assert stats["ingest_rate_per_s"] is None


async def test_a_projects_figures_count_its_own_documents_only(
    api: TestClient, db: AsyncDatabase
) -> None:
    await db[PROJECTS].insert_one({"_id": "prj-a", "org_id": "default", "name": "A"})
    await db[RAW].insert_many(
        [{"_id": f"e{i}", "project_id": "default", "device_id": "d"} for i in range(3)]
        + [{"_id": f"prj-a|e{i}", "project_id": "prj-a", "device_id": "d"} for i in range(2)]
    )
    await db[DEVICES].insert_one({"_id": "prj-a|d", "project_id": "prj-a", "device_id": "d"})
    figures: dict[str, Any] = {}

    async def counted() -> bool:
        # Gathered in the background from the first request on: 503 until then.
        answer = api.get("/stats", params={"project_id": "prj-a"})
        assert answer.status_code in (200, 503), answer.text
        figures.update(answer.json())
        return answer.status_code == 200 and figures["total_readings"] == 2

    await eventually(counted)
    assert (figures["total_devices"], figures["total_alerts"]) == (1, 0)
    # Kafka's figures are the installation's, not the project's.
    assert figures["kafka_reachable"] is False and figures["consumer_lag"] is None
    # Without project_id (the admin, or anyone with keys off): the installation's.
    installation = await stats_when(api, lambda s: s["total_readings"] == 5)
    assert installation["kafka_reachable"] is True
