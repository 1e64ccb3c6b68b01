"""The alerts worker's batch handler: evaluate, record, announce."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, Counter, Histogram
from telemetry_common.alert_rules import builtin_rules
from telemetry_common.kafka.consumer import Consumed, Handler
from telemetry_common.mongo import connect
from telemetry_common.reading import Reading, decode_kafka_value
from telemetry_common.settings import AlertsSettings
from telemetry_common.timefmt import utcnow
from telemetry_common.worker import WorkerContext, run_worker

from alerts_worker.incidents import BatchOutcome, evaluate_batch
from alerts_worker.outbox import Outbox
from alerts_worker.rule_cache import RuleCache
from alerts_worker.store import drop_retries, load_states, record_transitions, write_states

SERVICE = "alerts-worker"
# State version conflicts only happen while two consumers briefly own one
# partition during a rebalance; a handful of rereads settles them.
MAX_CONFLICT_ROUNDS = 5


class WriteConflict(RuntimeError):
    """A (rule, device) state kept changing under us; the batch is retried from the top."""


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.readings_evaluated = Counter(
            "alerts_readings_evaluated_total",
            "Readings evaluated against the rules",
            registry=registry,
        )
        self.duplicates = Counter(
            "alerts_duplicate_readings_total",
            "Readings skipped because their device sent them before (same event_id)",
            registry=registry,
        )
        self.rule_evaluations = Counter(
            "alerts_rule_evaluations_total",
            "Rules evaluated, one per rule and reading it applies to",
            registry=registry,
        )
        self.fired = Counter("alerts_fired_total", "Alerts fired", ["severity"], registry=registry)
        self.resolved = Counter(
            "alerts_resolved_total", "Alerts resolved", ["severity"], registry=registry
        )
        self.silenced = Counter(
            "alerts_silenced_total",
            "Transitions recorded but not announced because a silence covered them",
            registry=registry,
        )
        self.published = Counter(
            "alerts_published_total", "Transitions published to alerts.triggered", registry=registry
        )
        self.evaluation_seconds = Histogram(
            "alerts_evaluation_seconds",
            "Time to evaluate a batch and record its transitions (before publishing)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )

    def count(self, outcome: BatchOutcome, fresh: set[str]) -> None:
        """Count the transitions recorded for the first time (not those a replay computed again)."""
        self.rule_evaluations.inc(outcome.evaluations)
        for raised in outcome.raised:
            transition = raised.transition
            if transition.notification_id not in fresh:
                continue
            counter = self.fired if transition.kind == "fired" else self.resolved
            counter.labels(transition.alert["severity"]).inc()
            if not transition.notify:
                self.silenced.inc()


def decode(record: ConsumerRecord) -> Reading:
    return decode_kafka_value(record.value)


def bind_handler(
    rules: RuleCache, metrics: AlertMetrics
) -> Callable[[WorkerContext], Handler[Reading]]:
    def bind(context: WorkerContext) -> Handler[Reading]:
        db = context.db
        outbox = Outbox(
            db,
            context.producer,
            context.settings.alerts_topic,
            context.settings.kafka_bootstrap_servers,
        )

        async def handle(items: list[Consumed[Reading]]) -> None:
            if not rules.loaded:
                # Never evaluate without the rules: a batch would pass unjudged.
                await rules.reload()
            partitions = {item.partition for item in items}
            with metrics.evaluation_seconds.time():
                first_copies = await drop_retries(db, items, utcnow())
                outcome, fresh = await evaluate_and_record(first_copies, rules)
            published = await outbox.publish_pending(partitions, fresh)
            metrics.readings_evaluated.inc(len(items))
            metrics.duplicates.inc(len(items) - len(first_copies))
            metrics.count(outcome, fresh)
            metrics.published.inc(published)

        async def evaluate_and_record(
            items: list[Consumed[Reading]], rules: RuleCache
        ) -> tuple[BatchOutcome, set[str]]:
            """The batch's outcome, and the notification ids it recorded first."""
            index, silences = rules.rules, rules.silences
            devices = {item.value.device_id for item in items}
            outcome = BatchOutcome()
            fresh: set[str] = set()
            for _ in range(MAX_CONFLICT_ROUNDS):
                items = [item for item in items if item.value.device_id in devices]
                tracked = await load_states(db, devices)
                now = utcnow()
                round_outcome = evaluate_batch(items, index, tracked, silences, now)
                fresh |= await record_transitions(db, round_outcome.raised, now)
                conflicts = await write_states(db, tracked.values(), now)
                outcome.evaluations += round_outcome.evaluations
                outcome.raised += round_outcome.raised
                if not conflicts:
                    return outcome, fresh
                # The conflicting states are read again and their readings evaluated on
                # what the other owner wrote (the same transitions are recorded once).
                devices = {tracked[c].device_id for c in conflicts}
            raise WriteConflict(f"{len(conflicts)} alert states kept changing during the write")

        return handle

    return bind


async def run(
    settings: AlertsSettings, registry: CollectorRegistry, stop: asyncio.Event | None = None
) -> None:
    # Its own client: the rules are read apart from the consumer's writes.
    mongo = connect(settings.mongo_url, f"{SERVICE}-rules")
    db = mongo[settings.mongo_db]
    builtin = builtin_rules(
        settings.temp_min_threshold,
        settings.temp_max_threshold,
        settings.humidity_min_threshold,
        settings.humidity_max_threshold,
    )
    rules = RuleCache(db, settings.rules_refresh_s, registry, builtin)
    await rules.start()
    try:
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
    finally:
        await rules.stop()
        with contextlib.suppress(Exception):
            await mongo.close()
