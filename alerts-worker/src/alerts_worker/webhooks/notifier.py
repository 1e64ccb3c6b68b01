"""The alert notifier's wiring: alerts.triggered in, deliveries recorded, then sent.

It consumes with its own consumer group, so it reads every transition whatever
the alerts worker's group does, and commits an offset only after the batch's
deliveries are recorded (nothing is lost). Sending happens apart from
consuming, from the recorded deliveries, so a slow receiver never holds up the
topic and a restart resumes whatever was pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.kafka.consumer import Consumed, Handler
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.metrics import ConsumerMetrics
from telemetry_common.infra.mongo import Database, connect, ensure_indexes
from telemetry_common.infra.settings import AlertsSettings
from telemetry_common.infra.worker import consume_loop, start_with_retry, subscribe

from alerts_worker.webhooks.delivery import new_client
from alerts_worker.webhooks.dispatcher import Dispatcher
from alerts_worker.webhooks.metrics import WebhookMetrics
from alerts_worker.webhooks.records import Notification, decode_notification, record_deliveries

log = logging.getLogger(__name__)

NAME = "alert-notifier"


def notification_handler(
    db: Database, metrics: WebhookMetrics, wake: asyncio.Event
) -> Handler[Notification | None]:
    async def handle(items: list[Consumed[Notification | None]]) -> None:
        notifications = [item.value for item in items if item.value is not None]
        metrics.skipped.inc(len(items) - len(notifications))
        recorded = await record_deliveries(db, notifications, utcnow())
        metrics.recorded.inc(recorded)
        if recorded:
            wake.set()

    return handle


async def run_notifier(
    settings: AlertsSettings, registry: CollectorRegistry, stop: asyncio.Event
) -> None:
    mongo = connect(settings.mongo_url, NAME)
    db = mongo[settings.mongo_db]
    producer = build_producer(settings.kafka_bootstrap_servers, client_id=NAME)  # the DLQ's
    consumer = subscribe(settings, settings.alerts_topic, settings.notifier_consumer_group, NAME)
    client = new_client(settings.webhook_timeout_s, settings.webhook_concurrency)
    metrics = WebhookMetrics(registry)
    wake = asyncio.Event()
    try:
        await start_with_retry("MongoDB", lambda: ensure_indexes(db, raw_retention=None), stop)
        await start_with_retry("Kafka producer", producer.start, stop)
        await start_with_retry("Kafka consumer", consumer.start, stop)
        consuming = consume_loop(
            NAME,
            settings,
            consumer,
            producer,
            decode_notification,
            notification_handler(db, metrics, wake),
            ConsumerMetrics(registry, namespace="notifier"),
        )
        dispatcher = Dispatcher(db, settings, metrics, client, wake)
        log.info(
            "%s consuming %s as group %s",
            NAME,
            settings.alerts_topic,
            settings.notifier_consumer_group,
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(consuming.run(stop))
            tasks.create_task(dispatcher.run(stop))
    finally:
        for close in (consumer.stop, producer.stop, client.close):
            with contextlib.suppress(Exception):
                await close()
        await mongo.close()
