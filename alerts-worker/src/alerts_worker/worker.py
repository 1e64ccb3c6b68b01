"""The alerts worker's batch handler: evaluate, record, announce."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter
from telemetry_common.kafka.consumer import Consumed, Handler
from telemetry_common.reading import Reading, decode_kafka_value
from telemetry_common.settings import AlertsSettings
from telemetry_common.worker import WorkerContext, run_worker

from alerts_worker.rules import ThresholdRule, default_rules, evaluate
from alerts_worker.store import publish_pending, record_alerts

SERVICE = "alerts-worker"


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.readings_evaluated = Counter(
            "alerts_readings_evaluated_total",
            "Readings evaluated against the rules",
            registry=registry,
        )
        self.alerts_created = Counter(
            "alerts_created_total", "New alert documents", ["severity"], registry=registry
        )
        self.alerts_published = Counter(
            "alerts_published_total", "Alerts published to alerts.triggered", registry=registry
        )


def decode(record: ConsumerRecord) -> Reading:
    return decode_kafka_value(record.value)


def bind_handler(
    rules: list[ThresholdRule], metrics: AlertMetrics
) -> Callable[[WorkerContext], Handler[Reading]]:
    def bind(context: WorkerContext) -> Handler[Reading]:
        async def handle(items: list[Consumed[Reading]]) -> None:
            alerts = [alert for item in items for alert in evaluate(item.value, rules)]
            # The same reading twice in one batch (a device retry) is one alert.
            unique = list({alert.alert_id: alert for alert in alerts}.values())
            created = await record_alerts(context.db, unique)
            published = await publish_pending(
                context.db,
                context.producer,
                context.settings.alerts_topic,
                [a.alert_id for a in unique],
            )
            metrics.readings_evaluated.inc(len(items))
            for alert in created:
                metrics.alerts_created.labels(alert.severity).inc()
            metrics.alerts_published.inc(published)

        return handle

    return bind


async def run(
    settings: AlertsSettings, registry: CollectorRegistry, stop: asyncio.Event | None = None
) -> None:
    rules = default_rules(
        settings.temp_min_threshold,
        settings.temp_max_threshold,
        settings.humidity_min_threshold,
        settings.humidity_max_threshold,
    )
    await run_worker(
        name=SERVICE,
        settings=settings,
        group_id=settings.consumer_group,
        port=settings.port,
        registry=registry,
        decode=decode,
        make_handler=bind_handler(rules, AlertMetrics(registry)),
        stop=stop,
    )
