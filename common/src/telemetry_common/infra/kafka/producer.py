"""The one way a service builds a Kafka producer, and starts one over when the broker lost track."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, OutOfOrderSequenceNumber, UnknownProducerId
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

# The broker no longer accepts this producer's sequence numbers: a batch expired
# unsent while the broker was away, or the broker lost the producer's state in a
# restart. The Java client bumps its epoch and goes on; aiokafka fails every
# later send to that partition until the producer is replaced by one with a new
# producer id (aio-libs/aiokafka#1017).
STALE_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)

# A replaced producer's buffered batches can only fail; their senders hear of it
# and retry on the new one. Its stop() is given this long to say so.
RETIRE_TIMEOUT_S = 10.0


def is_stale_producer(exc: BaseException) -> bool:
    return isinstance(exc, STALE_PRODUCER_ERRORS)


class RenewableProducer:
    """An AIOKafkaProducer that ``renew()`` replaces with a fresh one (a new producer id).

    Everyone holding it keeps the same object, so a renewal reaches the API's
    publisher, the alerts outbox and the DLQ publisher at once: each call below
    goes to the producer current at the time of the call.
    """

    def __init__(self, make: Callable[[], AIOKafkaProducer]):
        self._make = make
        self._current = make()

    async def start(self) -> None:
        await self._current.start()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves once the broker has acknowledged it."""
        delivery: asyncio.Future[RecordMetadata] = await self._current.send(
            topic, value, key, partition=partition, headers=headers
        )
        return delivery

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Headers | None = None,
    ) -> RecordMetadata:
        return await (await self.send(topic, value, key, headers=headers))

    def create_batch(self) -> BatchBuilder:
        return self._current.create_batch()

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[RecordMetadata]:
        delivery: asyncio.Future[RecordMetadata] = await self._current.send_batch(
            batch, topic, partition=partition
        )
        return delivery

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self._current.partitions_for(topic)
        return partitions

    async def refresh_metadata(self) -> None:
        """Ask the cluster for every topic's partitions and leaders again."""
        await self._current.client.fetch_all_metadata()

    async def stop(self) -> None:
        await self._current.stop()

    async def renew(self) -> None:
        """Start a fresh producer and retire the current one; raises if Kafka is unreachable."""
        replacement = self._make()
        try:
            await replacement.start()
        except BaseException:
            await replacement.stop()
            raise
        retired, self._current = self._current, replacement
        log.warning("Kafka producer started over under a new producer id")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(retired.stop(), RETIRE_TIMEOUT_S)


def build_producer(
    bootstrap_servers: str, client_id: str, **overrides: object
) -> RenewableProducer:
    """A producer whose acknowledged send means the record is durable.

    acks=all waits for every in-sync replica and enable_idempotence keeps the
    broker from writing a retried batch twice (KIP-98), so an API that answers
    2xx after ``send_and_wait`` never loses nor duplicates what it confirmed.
    """
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        # A few milliseconds of lingering lets concurrent requests share one
        # produce request; the latency cost is far below an HTTP round trip.
        "linger_ms": 5,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
    }
    options.update(overrides)
    return RenewableProducer(lambda: AIOKafkaProducer(**options))
