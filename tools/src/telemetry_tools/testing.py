"""Pytest fixtures: real Kafka and MongoDB once per session, fresh names per test.

Loaded by the root conftest.py. The servers run on free ports under the
session's temporary directory, so the suite runs beside a `make up` stack.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from pymongo import AsyncMongoClient
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics
from telemetry_common.infra.mongo import Client, Database

from telemetry_tools.servers import KafkaServer, MongoServer, free_port


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    server = KafkaServer(tmp_path_factory.mktemp("kafka"), free_port(), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("mongo"), free_port(), cache_size="256M")
    server.start()
    yield server
    server.stop()


@dataclass
class Topics:
    telemetry: str
    dlq: str
    alerts: str


@pytest.fixture
async def topics(kafka_server: KafkaServer) -> Topics:
    """Topics of this test's own, so tests never read each other's records."""
    suffix = uuid.uuid4().hex[:10]
    names = Topics(
        f"telemetry.raw.{suffix}", f"telemetry.dlq.{suffix}", f"alerts.triggered.{suffix}"
    )
    await ensure_topics(
        kafka_server.bootstrap_servers,
        [
            TopicSpec(names.telemetry, 3, {}),
            TopicSpec(names.dlq, 1, {}),
            TopicSpec(names.alerts, 1, {}),
        ],
    )
    return names


@pytest.fixture
def db_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db(mongo_server: MongoServer, db_name: str) -> AsyncIterator[Database]:
    client: Client = AsyncMongoClient(mongo_server.url, tz_aware=True)
    yield client[db_name]
    await client.close()


@pytest.fixture
def service_env(
    kafka_server: KafkaServer, mongo_server: MongoServer, topics: Topics, db_name: str
) -> dict[str, Any]:
    """Settings keyword arguments that point a service at this test's servers and names."""
    return {
        "kafka_bootstrap_servers": kafka_server.bootstrap_servers,
        "mongo_url": mongo_server.url,
        "mongo_db": db_name,
        "telemetry_topic": topics.telemetry,
        "dlq_topic": topics.dlq,
        "alerts_topic": topics.alerts,
        "host": "127.0.0.1",
    }


@pytest.fixture
async def producer(kafka_server: KafkaServer) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(
        bootstrap_servers=kafka_server.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await prod.start()
    yield prod
    await prod.stop()


async def read_topic(
    bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[ConsumerRecord]:
    """Every record on ``topic`` from the start, once ``expected`` have arrived (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0, interval_s: float = 0.2
) -> None:
    """Wait until ``check()`` is true; fail with a clear message otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s: {check.__name__}")
