"""Where accepted readings are published: Kafka, keyed by device, acknowledged before 2xx."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from telemetry_common.kafka.producer import build_producer
from telemetry_common.reading import Reading
from telemetry_common.request_id import kafka_headers

log = logging.getLogger(__name__)


class KafkaUnavailable(RuntimeError):
    """Kafka did not acknowledge in time: the caller must answer 503, never 2xx."""


class ReadingPublisher:
    def __init__(self, bootstrap_servers: str, topic: str, send_timeout_s: float):
        self._topic = topic
        self._send_timeout_s = send_timeout_s
        self._bootstrap_servers = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect in the background so the API serves /health (and 503s) while Kafka is down."""
        self._connect_task = asyncio.create_task(self._connect_forever())

    async def _connect_forever(self) -> None:
        backoff = 0.5
        while True:
            producer = build_producer(
                self._bootstrap_servers,
                client_id="ingestion-api",
                request_timeout_ms=int(self._send_timeout_s * 1000),
            )
            try:
                await producer.start()
            except KafkaError as exc:
                await producer.stop()
                log.warning("Kafka not reachable (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._producer = producer
            log.info("connected to Kafka at %s", self._bootstrap_servers)
            return

    async def stop(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
        if self._producer is not None:
            # stop() flushes what is buffered: nothing acknowledged is left behind.
            await self._producer.stop()

    async def publish(self, readings: list[Reading]) -> None:
        """Return once Kafka acknowledged every reading (acks=all), or raise KafkaUnavailable."""
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable("not connected to Kafka yet")
        headers = kafka_headers()
        try:
            async with asyncio.timeout(self._send_timeout_s):
                pending = [
                    await producer.send(
                        self._topic,
                        value=r.to_kafka_value(),
                        key=r.device_id.encode(),
                        headers=headers,
                    )
                    for r in readings
                ]
                await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc
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
