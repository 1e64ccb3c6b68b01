"""Where accepted readings are published: Kafka, keyed by device, acknowledged before 2xx.

Backpressure: the API never queues without bound. A request is refused with 503
at once when the readings already waiting for Kafka's acknowledgement would pass
MAX_IN_FLIGHT_READINGS, or while Kafka is known to be unreachable (a send failed
and a metadata probe has not succeeded since). The producer reconnects by
itself; the probe notices and the API takes readings again without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import lru_cache

from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import CollectorRegistry
from telemetry_common.domain.reading import Reading
from telemetry_common.http.request_id import kafka_headers
from telemetry_common.infra.background import BackgroundTasks
from telemetry_common.infra.errors import TelemetryError
from telemetry_common.infra.kafka.producer import RenewableProducer, build_producer
from telemetry_common.infra.kafka.readings import project_header
from telemetry_common.infra.metrics import REQUEST_BUCKETS, Instruments
from telemetry_common.infra.retry import retrying

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0


class KafkaUnavailable(TelemetryError):
    """Kafka cannot take readings now: the caller must answer 503, never 2xx."""

    transient = True
    reason = "kafka_unavailable"


class ProducerSaturated(KafkaUnavailable):
    """Too many readings already wait for Kafka's acknowledgement, or the producer's queue
    for a partition stayed full for the send timeout: a full buffer, not a Kafka outage."""

    reason = "producer_saturated"


QUEUE_FULL = "the producer's queue is full; retry later"


MAX_REMEMBERED_KEYS = 200_000


# Remembered: aiokafka's murmur2 is pure Python, slow per key, and a fleet posts
# for the same device ids over and over.
@lru_cache(maxsize=MAX_REMEMBERED_KEYS)
def _key_hash(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF


def partition_for(key: bytes, partitions: list[int]) -> int:
    """The partition aiokafka's default partitioner gives ``key`` (murmur2, as Java's client)."""
    return partitions[_key_hash(key) % len(partitions)]


# max_batch_size: large enough that a full request's readings for one partition
# go out as one batch (5,000 readings of ~230 bytes over 6 partitions is ~190
# KiB), so concurrent requests queue one batch each per partition, not several;
# below the broker's default 1 MiB message.max.bytes.
# linger_ms 0: aiokafka keeps one produce request in flight per broker, so the
# readings of concurrent requests gather into one batch while it is out anyway;
# lingering on top only added to every request's latency (BENCHMARKS.md, design
# choices).
PRODUCER_OPTIONS: dict[str, object] = {"max_batch_size": 256 * 1024, "linger_ms": 0}
ENQUEUE_RETRY_S = 0.01


async def send_batches(
    producer: RenewableProducer,
    topic: str,
    readings: Sequence[Reading],
    headers: list[tuple[str, bytes]] | None = None,
    patience_s: float = 10.0,
) -> None:
    """Publish many readings as one record batch per partition; return once all are acknowledged.
    (ProducerSaturated when the producer cannot queue them in time)."""
    try:
        acknowledged = await _enqueue_batches(producer, topic, readings, headers, patience_s)
    except KafkaTimeoutError:
        raise ProducerSaturated(QUEUE_FULL) from None
    await asyncio.gather(*acknowledged)


async def _enqueue_batches(
    producer: RenewableProducer,
    topic: str,
    readings: Sequence[Reading],
    headers: list[tuple[str, bytes]] | None,
    patience_s: float,
) -> list[asyncio.Future[object]]:
    """Hand the readings to the producer; the futures resolve on Kafka's acknowledgement.

    ``producer.send`` costs a coroutine, a future and a lookup per record;
    appending to a batch builder costs a fraction of that. The partition is the
    one ``send`` picks for the same key (partition_for), so a device's readings stay in one
    partition, in order, whichever endpoint they came through.
    """
    give_up_at = time.monotonic() + patience_s

    async def enqueue(builder: BatchBuilder, partition: int) -> asyncio.Future[object]:
        builder.close()
        while True:
            try:
                return await producer.send_batch(builder, topic, partition=partition)
            except KafkaTimeoutError:
                # aiokafka's add_batch gives up at once while a batch of this partition
                # is being retried (after a leader change): its wait for that batch
                # returns at once and its timeout shrinks by the whole elapsed time on
                # each turn. The queue frees within milliseconds; try again until the
                # caller's patience runs out.
                if time.monotonic() >= give_up_at:
                    raise
                await asyncio.sleep(ENQUEUE_RETRY_S)

    partitions = sorted(await producer.partitions_for(topic))
    builders: dict[int, BatchBuilder] = {}
    acknowledged: list[asyncio.Future[object]] = []
    for reading in readings:
        key = reading.device_id.encode()
        value = reading.to_kafka_value()
        partition = partition_for(key, partitions)
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            # Full: send it and start the next (a batch's first record always fits).
            acknowledged.append(await enqueue(builder, partition))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None, headers=headers or [])
    for partition, builder in builders.items():
        acknowledged.append(await enqueue(builder, partition))
    return acknowledged


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry):
        on = Instruments(registry)
        self.send_seconds = on.histogram(
            "ingest_kafka_send_duration_seconds",
            "Time from handing a request's readings to the producer to Kafka's acknowledgement",
            buckets=REQUEST_BUCKETS,
        )
        self.in_flight = on.gauge(
            "ingest_producer_in_flight_readings",
            "Readings handed to the producer and not yet acknowledged by Kafka",
        )
        self.buffer_use = on.gauge(
            "ingest_producer_buffer_use_ratio",
            "In-flight readings as a share of MAX_IN_FLIGHT_READINGS",
        )
        self.kafka_up = on.gauge("ingest_kafka_up", "1 while the producer can reach Kafka")


class ReadingPublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        send_timeout_s: float,
        max_in_flight: int = 50_000,
        registry: CollectorRegistry | None = None,
    ):
        self._topic = topic
        self._send_timeout_s = send_timeout_s
        self._bootstrap_servers = bootstrap_servers
        self._max_in_flight = max_in_flight
        self._producer: RenewableProducer | None = None
        self._background = BackgroundTasks()
        self._in_flight = 0
        self._failing = False
        self._metrics = PublisherMetrics(registry or CollectorRegistry())
        # Read when Prometheus scrapes, not set on every request.
        self._metrics.in_flight.set_function(lambda: self._in_flight)
        self._metrics.buffer_use.set_function(lambda: self._in_flight / self._max_in_flight)

    @property
    def connected(self) -> bool:
        return self._producer is not None and not self._failing

    async def start(self) -> None:
        """Connect in the background so the API serves /health (and 503s) while Kafka is down."""
        self._background.start(self._connect_forever(), name="connect to Kafka")

    async def _connect_forever(self) -> None:
        async for attempt in retrying(
            "connect to Kafka", retry_on=lambda exc: isinstance(exc, KafkaError)
        ):
            with attempt:
                producer = build_producer(
                    self._bootstrap_servers,
                    client_id="ingestion-api",
                    request_timeout_ms=int(self._send_timeout_s * 1000),
                    **PRODUCER_OPTIONS,
                )
                try:
                    await producer.start()
                except KafkaError:
                    await producer.stop()
                    raise
                self._producer = producer
        self._metrics.kafka_up.set(1)
        log.info("connected to Kafka at %s", self._bootstrap_servers)

    async def stop(self) -> None:
        await self._background.stop()
        if self._producer is not None:
            # stop() flushes what is buffered: nothing acknowledged is left behind.
            await self._producer.stop()

    async def publish(self, readings: list[Reading]) -> None:
        """Return once Kafka acknowledged every reading (acks=all), or raise KafkaUnavailable."""
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("not connected to Kafka yet")
        if self._failing:
            raise KafkaUnavailable("Kafka is unreachable; retry later")
        if self._in_flight + len(readings) > self._max_in_flight:
            raise ProducerSaturated(
                f"{self._in_flight} readings already wait for Kafka; retry later"
            )
        # One request's readings are one key's, so one project's.
        headers = [*kafka_headers(), project_header(readings[0].project_id)]
        self._in_flight += len(readings)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._send_timeout_s):
                if len(readings) == 1:
                    # One reading joins the batch the producer fills while its previous
                    # request is out, shared with the other requests of that moment.
                    reading = readings[0]
                    try:
                        acknowledged = await producer.send(
                            self._topic,
                            value=reading.to_kafka_value(),
                            key=reading.device_id.encode(),
                            headers=headers,
                        )
                    except KafkaTimeoutError:
                        raise ProducerSaturated(
                            "the producer's queue is full; retry later"
                        ) from None
                    await acknowledged
                else:
                    await send_batches(
                        producer, self._topic, readings, headers, self._send_timeout_s
                    )
        except (KafkaError, TimeoutError) as exc:
            self._mark_failing(exc)
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
        finally:
            self._in_flight -= len(readings)
        self._metrics.send_seconds.observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            first = readings[0]
            log.debug(
                "published",
                extra={
                    "readings": len(readings),
                    "event_id": first.event_id,
                    "device_id": first.device_id,
                },
            )

    def _mark_failing(self, exc: BaseException) -> None:
        if self._failing:
            return
        log.warning("Kafka did not acknowledge (%r); refusing readings until it answers", exc)
        self._failing = True
        self._metrics.kafka_up.set(0)
        self._background.start(self._probe_until_back(), name="probe Kafka")

    async def _probe_until_back(self) -> None:
        assert self._producer is not None
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                async with asyncio.timeout(self._send_timeout_s):
                    await self._producer.refresh_metadata()
                    # Sends that failed may have left gaps in the producer's
                    # sequence numbers, which the broker would refuse from now
                    # on: go on under a new producer id (every refused request
                    # was answered 503, and its retry is deduplicated by event_id).
                    await self._producer.renew()
            except (KafkaError, TimeoutError, OSError) as exc:
                log.debug("Kafka still unreachable: %r", exc)
                continue
            log.info("Kafka answers again; taking readings")
            self._failing = False
            self._metrics.kafka_up.set(1)
            return
