"""Batches pick each reading's partition themselves: it must be the one aiokafka's send() picks."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from ingestion_api.publish import partition_for


def test_a_device_lands_where_the_default_partitioner_puts_it() -> None:
    partitioner = DefaultPartitioner()
    for count in (1, 3, 6, 7):
        partitions = list(range(count))
        for i in range(2000):
            key = f"dev-{i}".encode()
            # Twice: the second answer comes from the remembered hash.
            assert partition_for(key, partitions) == partitioner(key, partitions, partitions)
            assert partition_for(key, partitions) == partitioner(key, partitions, partitions)
