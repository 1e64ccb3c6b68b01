"""Dead-letter publishing: the original bytes, with headers saying who failed, why and where."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from telemetry_common.domain.timefmt import iso_z, utcnow
from telemetry_common.infra.kafka.producer import RenewableProducer
from telemetry_common.infra.kafka.readings import PROJECT_HEADER, REQUEST_ID_HEADER

HEADER_WORKER = "dlq.worker"
HEADER_REASON = "dlq.reason"
HEADER_FAILED_AT = "dlq.failed_at"
HEADER_ATTEMPTS = "dlq.attempts"
HEADER_SOURCE_TOPIC = "dlq.source.topic"
HEADER_SOURCE_PARTITION = "dlq.source.partition"
HEADER_SOURCE_OFFSET = "dlq.source.offset"

MAX_REASON_BYTES = 2000


CARRIED_HEADERS = frozenset({REQUEST_ID_HEADER, PROJECT_HEADER})


def dlq_headers(
    record: ConsumerRecord, worker: str, reason: str, attempts: int
) -> list[tuple[str, bytes]]:
    # The request id rides along, so a replayed record is still traced to its request,
    # and the project, so it is replayed into the project it was posted to.
    carried = [(k, v) for k, v in record.headers or () if k in CARRIED_HEADERS]
    return [
        *carried,
        (HEADER_WORKER, worker.encode()),
        (HEADER_REASON, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        (HEADER_FAILED_AT, iso_z(utcnow()).encode()),
        (HEADER_ATTEMPTS, str(attempts).encode()),
        (HEADER_SOURCE_TOPIC, record.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(record.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(record.offset).encode()),
    ]


class DeadLetterPublisher:
    def __init__(self, producer: RenewableProducer, topic: str, worker: str):
        self._producer = producer
        self._topic = topic
        self._worker = worker

    async def publish(self, record: ConsumerRecord, reason: str, attempts: int) -> None:
        """Send and wait for the broker's ack: the source offset is committed only after this."""
        await self._producer.send_and_wait(
            self._topic,
            value=record.value,
            key=record.key,
            headers=dlq_headers(record, self._worker, reason, attempts),
        )
