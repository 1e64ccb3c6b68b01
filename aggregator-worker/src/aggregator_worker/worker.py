"""The aggregator's batch handler: raw readings, then the owned partitions' state."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.kafka.readings import decode_reading
from telemetry_common.infra.metrics import WRITE_BUCKETS, Instruments
from telemetry_common.infra.settings import AggregatorSettings
from telemetry_common.infra.worker import WorkerContext, run_worker

from aggregator_worker.fold import PositionedReading
from aggregator_worker.store import PartitionState, insert_raw

SERVICE = "aggregator-worker"


class AggregatorMetrics:
    # Consumer lag per partition is the shared consumer_lag_records gauge.
    def __init__(self, registry: CollectorRegistry):
        on = Instruments(registry)
        self.readings_folded = on.counter(
            "aggregator_readings_folded_total", "Readings folded into rollups"
        )
        self.duplicates = on.counter(
            "aggregator_duplicate_readings_total",
            "Readings skipped because the same event_id was already stored from another record",
        )
        self.replayed_readings = on.counter(
            "aggregator_replayed_readings_skipped_total",
            "Readings consumed again (crash, rebalance) that every bucket had already applied",
        )
        self.replayed_values = on.counter(
            "aggregator_replayed_values_skipped_total",
            "Values a stored bucket already held when this worker merged with it",
        )
        self.bucket_writes = on.counter(
            "aggregator_bucket_writes_total", "Rollup bucket documents written", ["resolution"]
        )
        self.write_seconds = on.histogram(
            "aggregator_write_duration_seconds",
            "Time to write one batch to MongoDB (raw, rollups, devices)",
            buckets=WRITE_BUCKETS,
        )
        self.held_buckets = on.gauge(
            "aggregator_held_buckets", "Rollup buckets held in memory for the owned partitions"
        )
        self.held_devices = on.gauge(
            "aggregator_held_devices", "Device summaries held in memory for the owned partitions"
        )
        self.rollup_write_seconds = on.histogram(
            "aggregator_rollup_write_duration_seconds",
            "Time to write one batch's rollup buckets and device summaries",
            buckets=WRITE_BUCKETS,
        )


class AggregatorHandler:
    """Folds each batch into the owned partitions' state and writes it; the consume
    loop commits the offsets after this returns."""

    def __init__(
        self, context: WorkerContext, settings: AggregatorSettings, metrics: AggregatorMetrics
    ):
        self._db = context.db
        self._metrics = metrics
        self.state = PartitionState(
            context.db,
            context.ownership,
            settings.rollup_plan,
            settings.stored_retention,
            bucket_limit=settings.aggregator_state_buckets,
            device_limit=settings.aggregator_state_devices,
        )

    async def partitions_assigned(self, partitions: set[int]) -> None:
        await self.state.partitions_assigned(partitions)

    async def partitions_revoked(self, partitions: set[int]) -> None:
        await self.state.partitions_revoked(partitions)

    async def __call__(self, items: list[Consumed[Reading]]) -> None:
        metrics = self._metrics
        started = time.perf_counter()
        batch = [PositionedReading(i.partition, i.offset, i.value) for i in items]
        raw = await insert_raw(self._db, batch)
        added = await self.state.fold(raw.to_fold)
        with metrics.rollup_write_seconds.time():
            outcome = await self.state.flush()
        folded = len(added) - len(outcome.replayed(added))
        metrics.readings_folded.inc(folded)
        metrics.duplicates.inc(raw.duplicates)
        metrics.replayed_readings.inc(len(raw.to_fold) - folded)
        metrics.replayed_values.inc(outcome.values_held)
        for resolution, count in outcome.bucket_writes.items():
            metrics.bucket_writes.labels(resolution).inc(count)
        metrics.held_buckets.set(len(self.state.buckets))
        metrics.held_devices.set(len(self.state.devices))
        metrics.write_seconds.observe(time.perf_counter() - started)


async def run(
    settings: AggregatorSettings, registry: CollectorRegistry, stop: asyncio.Event | None = None
) -> None:
    await run_worker(
        name=SERVICE,
        settings=settings,
        group_id=settings.consumer_group,
        port=settings.port,
        registry=registry,
        decode=decode_reading,
        handler_for=lambda context: AggregatorHandler(
            context, settings, AggregatorMetrics(registry)
        ),
        stop=stop,
        raw_retention=settings.raw_retention_period,
        merged_resolutions=list(settings.rollup_plan.derived),
    )
