"""The alerts worker's batch handler: evaluate, record, announce."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from prometheus_client import CollectorRegistry
from telemetry_common.domain.alert_rules import Silence, builtin_rules
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.kafka.readings import decode_reading
from telemetry_common.infra.metrics import Instruments
from telemetry_common.infra.mongo import Database, connect
from telemetry_common.infra.ownership import PartitionsLost
from telemetry_common.infra.settings import AlertsSettings
from telemetry_common.infra.worker import WorkerContext, run_worker

from alerts_worker.absence import Absences
from alerts_worker.incidents import BatchOutcome, RuleIndex, evaluate_batch
from alerts_worker.outbox import Outbox
from alerts_worker.rule_cache import RuleCache
from alerts_worker.store import HeldStates, drop_retries, record_transitions

SERVICE = "alerts-worker"


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry):
        on = Instruments(registry)
        self.readings_evaluated = on.counter(
            "alerts_readings_evaluated_total", "Readings evaluated against the rules"
        )
        self.duplicates = on.counter(
            "alerts_duplicate_readings_total",
            "Readings skipped because their device sent them before (same event_id)",
        )
        self.rule_evaluations = on.counter(
            "alerts_rule_evaluations_total",
            "Rules evaluated, one per rule and reading it applies to",
        )
        self.fired = on.counter("alerts_fired_total", "Alerts fired", ["severity"])
        self.resolved = on.counter("alerts_resolved_total", "Alerts resolved", ["severity"])
        self.silenced = on.counter(
            "alerts_silenced_total",
            "Transitions recorded but not announced because a silence covered them",
        )
        self.published = on.counter(
            "alerts_published_total", "Transitions published to alerts.triggered"
        )
        self.held_devices = on.gauge(
            "alerts_held_devices",
            "Devices whose rule states are held in memory for the owned partitions",
        )
        self.evaluation_seconds = on.histogram(
            "alerts_evaluation_seconds",
            "Time to evaluate a batch and record its transitions (before publishing)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def count(self, outcome: BatchOutcome, newly_recorded: set[str]) -> None:
        """Count the transitions recorded for the first time (not those a replay computed again)."""
        self.rule_evaluations.inc(outcome.evaluations)
        for raised in outcome.raised:
            transition = raised.transition
            if transition.notification_id not in newly_recorded:
                continue
            counter = self.fired if transition.kind == "fired" else self.resolved
            counter.labels(transition.alert["severity"]).inc()
            if not transition.notify:
                self.silenced.inc()


class AlertsHandler:
    """Evaluates each batch on the held states of the owned partitions, records its
    transitions with the states that raised them, announces them; what the rest
    learned is written at each ``checkpoint``, after which the consume loop commits.
    Every second (``tick``) it judges the silences of absent rules (``absence.py``)."""

    def __init__(
        self,
        context: WorkerContext,
        settings: AlertsSettings,
        rules: RuleCache,
        metrics: AlertMetrics,
    ):
        self._db = context.db
        self._rules = rules
        self._metrics = metrics
        self.states = HeldStates(context.db, context.ownership, settings.alerts_state_devices)
        self.absences = Absences(context.db, self.states.owned, context.progress)
        self._outbox = Outbox(
            context.db, context.producer, settings.alerts_topic, settings.kafka_bootstrap_servers
        )
        # A batch, a rebalance and a tick each see the states whole, never half-changed.
        self._turn = asyncio.Lock()

    async def partitions_assigned(self, partitions: set[int]) -> None:
        async with self._turn:
            kept = await self.states.partitions_assigned(partitions)
            await self.absences.partitions_assigned(partitions, kept)

    async def partitions_revoked(self, partitions: set[int]) -> None:
        async with self._turn:
            await self.states.partitions_revoked(partitions)

    async def checkpoint(self) -> set[int]:
        """Write what the batches since the last checkpoint learned; return the
        partitions found claimed by a newer owner."""
        async with self._turn:
            lost = await self.states.checkpoint(utcnow())
            if lost:
                self.absences.forget(lost)
            return lost | await self.absences.write()

    async def __call__(self, items: list[Consumed[Reading]]) -> None:
        rules, metrics = self._rules, self._metrics
        if not rules.loaded:
            # Never evaluate without the rules: a batch would pass unjudged.
            await rules.reload()
        partitions = {item.partition for item in items}
        async with self._turn:
            with metrics.evaluation_seconds.time():
                first_copies = await drop_retries(self._db, items, utcnow())
                outcome, newly_recorded, lost = await evaluate_and_record(
                    self._db, self.states, self.absences, first_copies, rules.rules, rules.silences
                )
            published = await self._outbox.publish_pending(partitions - lost, newly_recorded)
        metrics.readings_evaluated.inc(len(items))
        metrics.duplicates.inc(len(items) - len(first_copies))
        metrics.count(outcome, newly_recorded)
        metrics.published.inc(published)
        metrics.held_devices.set(len(self.states.devices))
        if lost:
            raise PartitionsLost(lost)

    async def tick(self) -> None:
        """Fire the absent rules whose silence has lasted, resolve those whose rule went."""
        rules = self._rules
        if not rules.loaded:
            return
        async with self._turn:
            absences = self.absences
            await absences.load()
            now = utcnow()
            absences.judge(rules.rules, rules.silences, now)
            # An opened alert is stored first: recorded after a crash from there (load).
            await absences.write(urgent_only=True)
            raised = absences.to_record()
            if not raised:
                return
            lost = await self.states.lost_before_recording({r.partition for r in raised})
            if lost:
                absences.forget(lost)
                raised = [r for r in raised if r.partition not in lost]
            newly_recorded = await record_transitions(self._db, raised, now)
            absences.settle(raised)
            await absences.write(urgent_only=True)
            published = await self._outbox.publish_pending(
                self.states.owned.assigned - lost, newly_recorded
            )
        self._metrics.count(BatchOutcome(raised), newly_recorded)
        self._metrics.published.inc(published)


async def evaluate_and_record(
    db: Database,
    states: HeldStates,
    absences: Absences,
    items: list[Consumed[Reading]],
    rules: RuleIndex,
    silences: Sequence[Silence],
) -> tuple[BatchOutcome, set[str], set[int]]:
    """Evaluate a batch on the held states, record its transitions and write the states
    that raised them (the rest wait for the checkpoint).

    Returns the outcome, the notification ids recorded first, and the partitions
    found claimed by a newer owner (nothing of theirs is recorded or written).
    """
    tracked = await states.for_batch(items)
    try:
        await absences.load()
        now = utcnow()
        outcome = evaluate_batch(items, rules, tracked, silences, now, states.clocks)
        absences.observe(items, rules, silences)
        from_absences = absences.to_record()
        outcome.raised += from_absences
        lost = await states.lost_before_recording({r.partition for r in outcome.raised})
        if lost:
            absences.forget(lost)
            outcome.raised = [r for r in outcome.raised if r.partition not in lost]
            tracked = {i: t for i, t in tracked.items() if t.device_key in states.devices}
        newly_recorded = await record_transitions(db, outcome.raised, now)
        absences.settle(from_absences)
        states.hold(tracked)
        lost |= await states.write_alerting(tracked, now)
        lost |= await absences.write(urgent_only=True)
    except BaseException:
        # The held states took the batch's readings and maybe their predecessors' since
        # the checkpoint: all are read back from the store, and the consume loop hands
        # this handler every record since the last commit again (receipt times only
        # grow, so presence needs no rewinding).
        states.rewind()
        absences.unsettle()
        raise
    return outcome, newly_recorded, lost


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
            decode=decode_reading,
            handler_for=lambda context: AlertsHandler(
                context, settings, rules, AlertMetrics(registry)
            ),
            stop=stop,
            checkpoint_interval_s=settings.checkpoint_interval_s,
        )
    finally:
        await rules.stop()
        with contextlib.suppress(Exception):
            await mongo.close()
