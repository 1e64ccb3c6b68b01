"""Prometheus metrics: one registry per service, names with units and _total for counters."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from telemetry_common.infra.retry import RETRIES

# Histogram buckets (seconds): a request or a send, a batch's writes.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
WRITE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A batch, a checkpoint or a delivery: a few milliseconds when all is well, seconds when not.
WORK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Instruments:
    """Declares metrics in one registry (under one ``namespace``, if any), one call each."""

    def __init__(self, registry: CollectorRegistry, namespace: str = ""):
        self._registry = registry
        self._namespace = namespace

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(
            name, documentation, labels, registry=self._registry, namespace=self._namespace
        )

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(
            name, documentation, labels, registry=self._registry, namespace=self._namespace
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> Histogram:
        return Histogram(
            name,
            documentation,
            labels,
            buckets=buckets,
            registry=self._registry,
            namespace=self._namespace,
        )


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors a dashboard expects."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(RETRIES)
    return registry


class ConsumerMetrics:
    """What every consuming worker reports, labelled by nothing it cannot bound.

    A second consumer in the same process (the alert notifier beside the alerts
    worker) passes a ``namespace`` so its series do not collide with the first's.
    """

    def __init__(self, registry: CollectorRegistry, namespace: str = ""):
        on = Instruments(registry, namespace)
        self.records_consumed = on.counter("consumer_records_total", "Records fetched from Kafka")
        self.records_dead_lettered = on.counter(
            "consumer_records_dead_lettered_total",
            "Records sent to the dead-letter topic",
            ["reason"],
        )
        self.batch_seconds = on.histogram(
            "consumer_batch_duration_seconds",
            "Time to process and commit one polled batch",
            buckets=WORK_BUCKETS,
        )
        self.end_to_end_seconds = on.histogram(
            "consumer_end_to_end_latency_seconds",
            "Time from ingestion-api publishing a record to this worker having handled it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.transient_failures = on.counter(
            "consumer_transient_failures_total",
            "Batch attempts that failed on an unavailable dependency and were retried",
        )
        self.commit_failures = on.counter(
            "consumer_commit_failures_total",
            "Offset commits refused after a rebalance (the batch is replayed idempotently)",
        )
        self.checkpoint_seconds = on.histogram(
            "consumer_checkpoint_duration_seconds",
            "Time to write a handler's deferred state before offsets are committed",
            buckets=WORK_BUCKETS,
        )
        self.replayed_records = on.counter(
            "consumer_replayed_records_total",
            "Records fetched again from the last checkpoint: after a failed batch, or by a "
            "member taking over a partition whose last owner had not checkpointed them",
        )
        self.partitions_lost = on.counter(
            "consumer_partitions_lost_total",
            "Partitions whose writes were refused because a newer owner had claimed them",
        )
        self.lag = on.gauge(
            "consumer_lag_records",
            "Records between the committed position and the partition's high watermark",
            ["partition"],
        )
        self.paused = on.gauge(
            "consumer_paused", "1 while consumption is paused waiting for a dependency to recover"
        )
