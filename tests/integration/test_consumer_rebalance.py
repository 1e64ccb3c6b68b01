"""The consume loop and Kafka's rebalance callbacks, against a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from integration.readings import fleet_readings, publish
from prometheus_client import CollectorRegistry
from telemetry_common.domain.reading import Reading, decode_kafka_value
from telemetry_common.infra.kafka.consumer import Consumed, RebalanceHooks
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.metrics import ConsumerMetrics
from telemetry_common.infra.settings import WorkerSettings
from telemetry_common.infra.worker import consume_loop, subscribe
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration


async def test_no_batch_is_handled_while_partitions_are_being_assigned(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer
) -> None:
    """aiokafka fetches a new partition while the assignment callback still runs; a
    worker that claims partitions there (a MongoDB round trip, slow under load) must
    not fold a batch into state the callback is about to reset."""
    readings = fleet_readings(devices=6, per_device=3)
    await publish(producer, topics.telemetry, readings)
    settings = WorkerSettings(**service_env)
    assigning = False
    handled_during_assignment: list[int] = []
    handled: list[str] = []

    async def assigned(partitions: set[int]) -> None:
        nonlocal assigning
        assigning = True
        await asyncio.sleep(1.5)  # longer than fetching the waiting records takes
        assigning = False

    async def revoked(partitions: set[int]) -> None:
        pass

    async def handle(items: list[Consumed[Reading]]) -> None:
        if assigning:
            handled_during_assignment.append(len(items))
        handled.extend(item.value.event_id for item in items)

    handling = asyncio.Lock()
    consumer = subscribe(
        settings,
        topics.telemetry,
        "rebalance-test",
        "test",
        RebalanceHooks(assigned, revoked, handling),
    )
    dlq_producer = build_producer(settings.kafka_bootstrap_servers, client_id="test")
    loop = consume_loop(
        "test",
        settings,
        consumer,
        dlq_producer,
        lambda record: decode_kafka_value(record.value),
        handle,
        ConsumerMetrics(CollectorRegistry()),
        handling,
    )
    stop = asyncio.Event()
    await consumer.start()
    running = asyncio.create_task(loop.run(stop))
    try:

        async def all_handled() -> bool:
            return len(handled) == len(readings)

        await eventually(all_handled, timeout_s=30)
    finally:
        stop.set()
        await running
        await consumer.stop()
    assert handled_during_assignment == []
    assert sorted(handled) == sorted(r.event_id for r in readings)
