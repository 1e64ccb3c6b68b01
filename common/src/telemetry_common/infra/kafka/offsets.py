"""Topic sizes and consumer lag from Kafka offsets, without reading a record.

One admin client (committed offsets of a group) and one consumer outside any
group (a topic's first and next offsets), kept open between calls: a reader
asking every few seconds pays a round trip per broker, not a connection. The
consumer is never subscribed nor assigned, so it fetches no records.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class KafkaOffsets:
    def __init__(self, bootstrap_servers: str, request_timeout_ms: int = 5000):
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=request_timeout_ms
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=request_timeout_ms,
        )

    async def start(self) -> None:
        try:
            await self._admin.start()
            await self._consumer.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        """The topic's partitions, asked each time: partitions may have been added."""
        [described] = await self._admin.describe_topics([topic])
        return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]

    async def next_offsets(self, topic: str) -> dict[TopicPartition, int]:
        """Per partition, the offset the next record will get: records ever written."""
        offsets: dict[TopicPartition, int] = await self._consumer.end_offsets(
            await self.partitions(topic)
        )
        return offsets

    async def size(self, topic: str) -> int:
        """Records the topic holds now (written, less those retention deleted)."""
        partitions = await self.partitions(topic)
        ends = await self._consumer.end_offsets(partitions)
        starts = await self._consumer.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)

    async def lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` that ``group`` has not committed yet.

        A partition the group never committed counts from its first record still
        held: the group will read all of those when it starts.
        """
        partitions = await self.partitions(topic)
        ends = await self._consumer.end_offsets(partitions)
        starts = await self._consumer.beginning_offsets(partitions)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=partitions)
        return sum(
            ends[tp] - max(committed[tp].offset if tp in committed else -1, starts[tp])
            for tp in partitions
        )
