"""The consume loop with a handler that writes its state at checkpoints only, against a
real broker: each commit names where a successor replays from (the last checkpoint),
and a failed batch sends the loop back there, so the state the handler keeps counts
each record once through failures, crashes and a stop."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from integration.readings import fleet_readings, publish
from prometheus_client import CollectorRegistry
from telemetry_common.domain.reading import Reading, decode_kafka_value
from telemetry_common.infra.kafka.consumer import (
    REPLAY_FROM,
    Checkpointing,
    Consumed,
    RebalanceHooks,
)
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.metrics import ConsumerMetrics
from telemetry_common.infra.settings import WorkerSettings
from telemetry_common.infra.worker import consume_loop, subscribe
from telemetry_tools.testing import Topics, eventually

pytestmark = pytest.mark.integration


@dataclass
class Snapshot:
    """Readings counted per device, and the offsets each partition has counted up to."""

    counts: Counter[str] = field(default_factory=Counter)
    watermarks: dict[int, int] = field(default_factory=dict)

    def copy(self) -> Snapshot:
        return Snapshot(Counter(self.counts), dict(self.watermarks))


@dataclass
class CountingHandler:
    """Counts in memory, written to ``stored`` only at checkpoints; a failure lets go of
    everything since the last one, as the contract asks of a checkpointing handler."""

    stored: Snapshot
    fail_on_batches: set[int] = field(default_factory=set)
    # Once set, the next batch never returns: the process died with it.
    die: asyncio.Event = field(default_factory=asyncio.Event)
    batches: int = 0
    checkpoints: int = 0
    # A batch takes a while, as one written to a database would: checkpoints fall
    # between batches.
    batch_s: float = 0.02

    def __post_init__(self) -> None:
        self.held = self.stored.copy()

    async def __call__(self, items: list[Consumed[Reading]]) -> None:
        if self.die.is_set():
            await asyncio.Event().wait()
        self.batches += 1
        await asyncio.sleep(self.batch_s)
        for item in items:
            if item.offset >= self.held.watermarks.get(item.partition, 0):
                self.held.counts[item.value.device_id] += 1
                self.held.watermarks[item.partition] = item.offset + 1
        if self.batches in self.fail_on_batches:
            self.held = self.stored.copy()
            raise ConnectionError("the store went away mid-batch")

    async def checkpoint(self) -> set[int]:
        self.stored = self.held.copy()
        self.checkpoints += 1
        return set()


class Member:
    """One consumer of the group with its checkpointing loop."""

    def __init__(self, service_env: dict, topic: str, group: str, handler: CountingHandler):
        settings = WorkerSettings(
            **service_env, consumer_max_records=7, retry_backoff_initial_s=0.05
        )

        async def unchanged(partitions: set[int]) -> None:
            pass

        handling = asyncio.Lock()
        self.hooks = RebalanceHooks(unchanged, unchanged, handling)
        self.consumer = subscribe(settings, topic, group, "test", self.hooks)
        self.registry = CollectorRegistry()
        self.loop = consume_loop(
            "test",
            settings,
            self.consumer,
            build_producer(settings.kafka_bootstrap_servers, client_id="test"),
            lambda record: decode_kafka_value(record.value),
            handler,
            ConsumerMetrics(self.registry),
            handling,
            checkpointing=Checkpointing(
                handler.checkpoint, 0.3, settings.kafka_bootstrap_servers, group
            ),
        )
        self.hooks.before_revoke = self.loop.save_before_revoke
        self.hooks.after_assign = self.loop.note_assigned

    async def run_until(self, done: asyncio.Event, dies: bool = False) -> None:
        stop = asyncio.Event()
        await self.consumer.start()
        running = asyncio.create_task(self.loop.run(stop))
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        finally:
            if dies:
                # Gone at once: nothing more checkpointed or committed, not even on leaving.
                self.hooks.before_revoke = None
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            else:
                stop.set()
                await running
            await self.consumer.stop()


async def stored_all(handler: CountingHandler, expected: int, counted: asyncio.Event) -> None:
    async def all_stored() -> bool:
        return sum(handler.stored.counts.values()) >= expected

    await eventually(all_stored, timeout_s=60)
    counted.set()


async def test_batches_that_fail_between_checkpoints_count_every_record_once(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer
) -> None:
    readings = fleet_readings(devices=12, per_device=10)
    await publish(producer, topics.telemetry, readings)
    handler = CountingHandler(Snapshot(), fail_on_batches={3, 4, 9, 15})
    member = Member(service_env, topics.telemetry, "ckpt-failures", handler)
    counted = asyncio.Event()
    watching = asyncio.create_task(stored_all(handler, len(readings), counted))
    await member.run_until(counted)
    await watching
    assert handler.stored.counts == Counter(r.device_id for r in readings)
    replayed = member.registry.get_sample_value("consumer_replayed_records_total")
    assert replayed is not None and replayed > 0


async def test_a_worker_that_dies_between_checkpoints_resumes_from_its_last_one(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer
) -> None:
    readings = fleet_readings(devices=20, per_device=20)
    await publish(producer, topics.telemetry, readings)
    first = CountingHandler(Snapshot())
    died = asyncio.Event()

    async def die_after_two_checkpoints() -> None:
        async def checkpointed() -> bool:
            return first.checkpoints >= 2

        await eventually(checkpointed, timeout_s=30, interval_s=0.01)
        await asyncio.sleep(0.1)  # a few batches past it
        first.die.set()
        died.set()

    dying = asyncio.create_task(die_after_two_checkpoints())
    await Member(service_env, topics.telemetry, "ckpt-crash", first).run_until(died, dies=True)
    await dying
    # What it counted past its last checkpoint is lost with it...
    assert sum(first.stored.counts.values()) < sum(first.held.counts.values()) < len(readings)
    # ...yet its commits kept up (the lag operators read stays true), each saying where
    # a successor must replay from.
    admin = AIOKafkaAdminClient(bootstrap_servers=service_env["kafka_bootstrap_servers"])
    await admin.start()
    try:
        commits = await admin.list_consumer_group_offsets("ckpt-crash")
    finally:
        await admin.close()
    ahead = {
        tp: meta
        for tp, meta in commits.items()
        if meta.offset > first.stored.watermarks.get(tp.partition, 0)
    }
    assert ahead
    assert all(
        int(meta.metadata.removeprefix(REPLAY_FROM)) <= first.stored.watermarks.get(tp.partition, 0)
        for tp, meta in ahead.items()
    )

    second = CountingHandler(first.stored)
    counted = asyncio.Event()
    watching = asyncio.create_task(stored_all(second, len(readings), counted))
    await Member(service_env, topics.telemetry, "ckpt-crash", second).run_until(counted)
    await watching
    assert second.stored.counts == Counter(r.device_id for r in readings)
