"""The aggregator's batch handler: raw readings, then rollups, then device summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Histogram
from telemetry_common.kafka.consumer import Consumed, Handler
from telemetry_common.reading import Reading, decode_kafka_value
from telemetry_common.settings import AggregatorSettings
from telemetry_common.worker import WorkerContext, run_worker

from aggregator_worker.fold import Placed, fold_batch
from aggregator_worker.store import RecentBuckets, insert_raw, write_devices, write_rollups

SERVICE = "aggregator-worker"

T = TypeVar("T")


class AggregatorMetrics:
    # Consumer lag per partition is the shared consumer_lag_records gauge.
    def __init__(self, registry: CollectorRegistry):
        self.readings_folded = Counter(
            "aggregator_readings_folded_total", "Readings folded into rollups", registry=registry
        )
        self.duplicates = Counter(
            "aggregator_duplicate_readings_total",
            "Readings skipped because the same event_id was already stored from another record",
            registry=registry,
        )
        self.replayed_readings = Counter(
            "aggregator_replayed_readings_skipped_total",
            "Readings consumed again (crash, rebalance) that every bucket had already applied",
            registry=registry,
        )
        self.replayed_values = Counter(
            "aggregator_replayed_values_skipped_total",
            "Bucket contributions skipped because the bucket had already applied their offset",
            registry=registry,
        )
        self.bucket_writes = Counter(
            "aggregator_bucket_writes_total",
            "Rollup bucket documents written",
            ["resolution"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "aggregator_write_duration_seconds",
            "Time to write one batch to MongoDB (raw, rollups, devices)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.rollup_write_seconds = Histogram(
            "aggregator_rollup_write_duration_seconds",
            "Time to read, fold and bulk-write one batch's rollup buckets",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )


async def timed(call: Awaitable[T], histogram: Histogram) -> T:
    started = time.perf_counter()
    try:
        return await call
    finally:
        histogram.observe(time.perf_counter() - started)


def decode(record: ConsumerRecord) -> Reading:
    return decode_kafka_value(record.value)


def make_handler(
    resolutions: Mapping[str, int],
    retention: Mapping[str, timedelta | None],
    metrics: AggregatorMetrics,
) -> Callable[[WorkerContext], Handler[Reading]]:
    def bind(context: WorkerContext) -> Handler[Reading]:
        db = context.db
        recent = RecentBuckets()

        async def handle(items: list[Consumed[Reading]]) -> None:
            started = time.perf_counter()
            batch = [Placed(i.partition, i.offset, i.value) for i in items]
            raw = await insert_raw(db, batch)
            buckets = fold_batch(raw.to_fold, resolutions)
            # Buckets and device summaries are separate documents: the server
            # works on one while this process prepares the other.
            writes, _ = await asyncio.gather(
                timed(write_rollups(db, buckets, retention, recent), metrics.rollup_write_seconds),
                write_devices(db, raw.to_fold),
            )
            metrics.readings_folded.inc(len(writes.applied))
            metrics.duplicates.inc(raw.duplicates)
            metrics.replayed_readings.inc(len(raw.to_fold) - len(writes.applied))
            metrics.replayed_values.inc(writes.values_skipped)
            for resolution, count in writes.by_resolution.items():
                metrics.bucket_writes.labels(resolution).inc(count)
            metrics.write_seconds.observe(time.perf_counter() - started)

        return handle

    return bind


async def run(
    settings: AggregatorSettings, registry: CollectorRegistry, stop: asyncio.Event | None = None
) -> None:
    await run_worker(
        name=SERVICE,
        settings=settings,
        group_id=settings.consumer_group,
        port=settings.port,
        registry=registry,
        decode=decode,
        make_handler=make_handler(
            settings.resolutions, settings.retention, AggregatorMetrics(registry)
        ),
        stop=stop,
        raw_retention=settings.raw_retention_period,
    )
