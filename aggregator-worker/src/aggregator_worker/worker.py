"""The aggregator's batch handler: raw readings, then rollups, then device summaries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Histogram
from telemetry_common.kafka.consumer import Consumed, Handler
from telemetry_common.reading import Reading, decode_kafka_value
from telemetry_common.resolutions import parse_resolutions
from telemetry_common.settings import AggregatorSettings
from telemetry_common.worker import WorkerContext, run_worker

from aggregator_worker.fold import Placed, fold_batch
from aggregator_worker.store import insert_raw, write_devices, write_rollups

SERVICE = "aggregator-worker"


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.readings_folded = Counter(
            "aggregator_readings_folded_total", "Readings folded into rollups", registry=registry
        )
        self.duplicates = Counter(
            "aggregator_duplicate_readings_total",
            "Readings skipped because the same event_id was already stored",
            registry=registry,
        )
        self.replayed_values = Counter(
            "aggregator_replayed_values_skipped_total",
            "Metric values skipped because their bucket had already applied their offset",
            registry=registry,
        )
        self.bucket_writes = Counter(
            "aggregator_bucket_writes_total", "Rollup bucket documents written", registry=registry
        )
        self.write_seconds = Histogram(
            "aggregator_write_duration_seconds",
            "Time to write one batch to MongoDB (raw, rollups, devices)",
            registry=registry,
        )


def decode(record: ConsumerRecord) -> Reading:
    return decode_kafka_value(record.value)


def make_handler(
    resolutions: dict[str, int], metrics: AggregatorMetrics
) -> Callable[[WorkerContext], Handler[Reading]]:
    def bind(context: WorkerContext) -> Handler[Reading]:
        db = context.db

        async def handle(items: list[Consumed[Reading]]) -> None:
            started = time.perf_counter()
            batch = [Placed(i.partition, i.offset, i.value) for i in items]
            raw = await insert_raw(db, batch)
            buckets = fold_batch(raw.to_fold, resolutions)
            writes, skipped = await write_rollups(db, buckets)
            await write_devices(db, raw.to_fold)
            metrics.readings_folded.inc(len(raw.to_fold))
            metrics.duplicates.inc(raw.duplicates)
            metrics.replayed_values.inc(skipped)
            metrics.bucket_writes.inc(writes)
            metrics.write_seconds.observe(time.perf_counter() - started)

        return handle

    return bind


async def run(
    settings: AggregatorSettings, registry: CollectorRegistry, stop: asyncio.Event | None = None
) -> None:
    resolutions = parse_resolutions(settings.rollup_resolutions)
    await run_worker(
        name=SERVICE,
        settings=settings,
        group_id=settings.consumer_group,
        port=settings.port,
        registry=registry,
        decode=decode,
        make_handler=make_handler(resolutions, AggregatorMetrics(registry)),
        stop=stop,
        raw_retention=timedelta(days=settings.raw_retention_days),
    )
