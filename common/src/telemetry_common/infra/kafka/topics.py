"""Topic creation, so a fresh broker (or a test's) has what the services expect."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from telemetry_common.infra.retry import retrying

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    # One broker locally and in tests; production topics come from Strimzi
    # KafkaTopic resources with their own replication.
    replication_factor: int = 1


def default_topics(
    telemetry: str = "telemetry.raw",
    dlq: str = "telemetry.dlq",
    alerts: str = "alerts.triggered",
    partitions: int = 6,
) -> list[TopicSpec]:
    # Partitions of telemetry.raw cap how many worker replicas share the load;
    # the key is device_id, so one device's readings stay in order on one partition.
    return [
        TopicSpec(telemetry, partitions, {"retention.ms": str(7 * 86_400_000)}),
        TopicSpec(dlq, 1, {"retention.ms": str(30 * 86_400_000)}),
        TopicSpec(alerts, 3, {"retention.ms": str(7 * 86_400_000)}),
    ]


async def ensure_topics(
    bootstrap_servers: str, topics: list[TopicSpec], timeout_s: float = 60.0
) -> None:
    """Create missing topics; existing ones are left as they are."""
    async for attempt in retrying(
        "connect to Kafka",
        retry_on=lambda exc: isinstance(exc, KafkaConnectionError),
        max_s=2.0,
        give_up_after_s=timeout_s,
    ):
        with attempt:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
            try:
                await admin.start()
            except KafkaConnectionError:
                await admin.close()
                raise
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [
                        NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.config)
                        for t in missing
                    ]
                )
            except TopicAlreadyExistsError:
                pass
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()
