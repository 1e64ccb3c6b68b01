"""Where silence is judged: `absent` rules, fired by a timer when a device stops reporting.

Every other rule is judged when a reading arrives; an absent rule must fire when
none does. So the worker keeps, per device of a project with absent rules, when
it last received a reading and a value of each metric those rules name (its
*presence*), and every second (``AlertsHandler.tick``) compares that with how far
the device's partition has been read (``ConsumerProgress``): the wall clock once
the consumer has caught up, the newest record handled while it is behind. A
worker that was down or lags therefore flags no device that did report: it has
simply not read that far yet.

Times are when ingestion-api received a reading (the record's CreateTime), not
the reading's own ``ts``: a device whose clock is wrong is still judged rightly.

Presence is stored (``device_presence``, one document per device, fenced by its
partition's epoch like the other states) and every owned partition's presence is
loaded when the partition is assigned: the timer must judge devices that send
nothing at all. Firing writes the open alert into the device's document first,
then records and announces it; a crash between the two is mended on load, where
each open alert is recorded again (idempotently: its id names the rule, the
device and the moment of the last reading, so the same silence is one alert).
The device's next reading (of the rule's metric) resolves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from telemetry_common.domain.alert_rules import Rule, Silence, silenced
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.rollup_layout import scoped_id
from telemetry_common.domain.timefmt import iso_z, to_utc_ms
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.kafka.progress import ConsumerProgress
from telemetry_common.infra.mongo import Database
from telemetry_common.infra.ownership import OwnedPartitions
from telemetry_common.infra.versioned import write_fenced

from alerts_worker.documents import AlertFields
from alerts_worker.incidents import RuleIndex, TransitionToRecord
from alerts_worker.rules import Transition, resolved_transition
from alerts_worker.store import DEVICE_PRESENCE

# What `seen` files a reading of any metric under: not a metric name (identifiers.py).
ANY_READING = "*"
# Before any reading: older than every receipt.
NEVER = datetime.min.replace(tzinfo=UTC)
# A refused write is a newer owner or an epoch nobody issued; past that it is not settling.
MAX_ROUNDS = 5


@dataclass
class Presence:
    """When a device was last heard from, and its open absent alerts."""

    project_id: str
    device_id: str
    partition: int
    first_seen: datetime
    # Newest receipt of any reading (ANY_READING) and of each metric an absent rule names.
    seen: dict[str, datetime] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    last_event_id: str = ""
    # rule_id -> the open alert's fields.
    open: dict[str, AlertFields] = field(default_factory=dict)
    changed: bool = False
    # Written at once, not at the next checkpoint: its open alerts changed, or a rule
    # watches it now whose readings a restart would not replay.
    urgent: bool = False
    # Whether device_presence holds it (a device of a project without absent rules is
    # only remembered, so that a rule made later knows when it was last heard from).
    stored: bool = False

    @property
    def key(self) -> str:
        return scoped_id(self.project_id, self.device_id)

    def silent_since(self, rule: Rule) -> datetime:
        """Since when the device has sent nothing the rule watches: its last such reading,
        or when watching began (its first reading, or the rule's creation if later)."""
        last = self.seen.get(rule.metric or ANY_READING, self.first_seen)
        if rule.created_at is not None and rule.created_at > last:
            return rule.created_at
        return last

    def to_document(self, epoch: int) -> dict[str, Any]:
        return {
            "_id": self.key,
            "project_id": self.project_id,
            "device_id": self.device_id,
            "partition": self.partition,
            "first_seen": self.first_seen,
            "seen": self.seen,
            "tags": self.tags,
            "last_event_id": self.last_event_id,
            "open": self.open,
            "_e": epoch,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Presence:
        return cls(
            project_id=doc["project_id"],
            device_id=doc["device_id"],
            partition=doc["partition"],
            first_seen=doc["first_seen"],
            seen=dict(doc.get("seen", {})),
            tags=list(doc.get("tags", [])),
            last_event_id=doc.get("last_event_id", ""),
            open=dict(doc.get("open", {})),
            stored=True,
        )


def received_at(item: Consumed[Reading]) -> datetime:
    """When ingestion-api published the reading (the record's CreateTime)."""
    return to_utc_ms(datetime.fromtimestamp(item.record.timestamp / 1000, UTC))


def absent_alert(rule: Rule, presence: Presence, since: datetime, now: datetime) -> AlertFields:
    """The alert of one silence: named by the rule, the device and the last reading's
    time, so judging the same silence again (after a restart) names the same alert."""
    metric = rule.metric or ANY_READING
    what = f"no {rule.metric}" if rule.metric else "nothing"
    fired_at = since + rule.for_span
    return {
        "alert_id": f"{rule.rule_id}:{presence.device_id}:{int(since.timestamp() * 1000)}",
        "event_id": presence.last_event_id,
        "project_id": rule.project_id,
        "device_id": presence.device_id,
        "sensor_type": metric,
        "metric": metric,
        # Seconds silent when judged; the threshold is the silence the rule allows.
        "value": round((now - since).total_seconds(), 3),
        "threshold": float(rule.for_s),
        "alert_type": rule.alert_type_of(metric),
        "severity": rule.severity,
        "message": f"{rule.name}: {presence.device_id} has sent {what} "
        f"since {iso_z(since)} (more than {rule.for_})",
        "timestamp": since,
        "created_at": now,
        "rule_id": rule.rule_id,
        "rule_name": rule.name,
        "status": "active",
        "fired_at": fired_at,
        "resolved_at": None,
        "silenced": False,
    }


def due(presence: Presence, rules: Iterable[Rule], clock: datetime) -> list[tuple[Rule, datetime]]:
    """The rules covering the device that its silence, as far as ``clock``, fires now,
    with the time it began."""
    found = []
    for rule in rules:
        if rule.rule_id in presence.open or not rule.covers(presence.device_id, presence.tags):
            continue
        since = presence.silent_since(rule)
        if clock - since >= rule.for_span:
            found.append((rule, since))
    return found


def _document_under(epochs: dict[int, int], presence: Presence) -> dict[str, Any]:
    return presence.to_document(epochs[presence.partition])


class Absences:
    """The presence of the devices of the partitions this worker owns, and the absent
    alerts' transitions on their way to being recorded."""

    def __init__(self, db: Database, owned: OwnedPartitions, progress: ConsumerProgress):
        self._db = db
        self._owned = owned
        self._progress = progress
        self.devices: dict[str, Presence] = {}
        # Assigned partitions whose stored presence is not in memory yet.
        self._unloaded: set[int] = set()
        # Transitions decided but not recorded yet, by notification id.
        self._to_record: dict[str, TransitionToRecord] = {}
        # (device key, rule id) of the open alerts resolved but not recorded yet.
        self._closing: set[tuple[str, str]] = set()

    async def partitions_assigned(self, partitions: set[int], kept: set[int]) -> None:
        """Keep what is still exact (``kept``: nobody claimed it meanwhile); what is not
        is read again by :meth:`load`, first thing in the next batch or tick."""
        self.forget({p.partition for p in self.devices.values()} - kept)
        self._unloaded = (self._unloaded & partitions) | (partitions - kept)

    def forget(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.devices = {k: p for k, p in self.devices.items() if p.partition not in gone}
        self._to_record = {n: r for n, r in self._to_record.items() if r.partition not in gone}
        self._closing = {(k, r) for k, r in self._closing if k in self.devices}

    async def load(self) -> None:
        """Read the stored presence of the assigned partitions not read yet. Their open
        alerts are recorded again: a crash may have come between writing and recording."""
        if not self._unloaded:
            return
        partitions = sorted(self._unloaded)
        async for doc in self._db[DEVICE_PRESENCE].find({"partition": {"$in": partitions}}):
            presence = self.devices[doc["_id"]] = Presence.from_document(doc)
            for alert in presence.open.values():
                fired = Transition("fired", alert, alert["fired_at"], notify=not alert["silenced"])
                self._decided(TransitionToRecord(fired, presence.partition))
        self._unloaded.clear()

    def _decided(self, raised: TransitionToRecord) -> None:
        self._to_record[raised.transition.notification_id] = raised

    def to_record(self) -> list[TransitionToRecord]:
        return list(self._to_record.values())

    def observe(
        self, items: Sequence[Consumed[Reading]], rules: RuleIndex, silences: Sequence[Silence]
    ) -> None:
        """Take in a batch's readings: when each device was heard from, and the absent
        alerts its reading resolves (recorded with the batch's transitions)."""
        devices, absent = self.devices, rules.absent
        # Records of a batch share few CreateTimes (a producer's batch has one).
        last_ms: int | None = None
        at = NEVER
        for item in items:
            reading = item.value
            project_rules = absent.get(reading.project_id)
            watching = (
                [r for r in project_rules if r.covers(reading.device_id, reading.tags)]
                if project_rules
                else []
            )
            key = scoped_id(reading.project_id, reading.device_id)
            presence = devices.get(key)
            if item.record.timestamp != last_ms:
                last_ms, at = item.record.timestamp, received_at(item)
            if presence is None:
                presence = devices[key] = Presence(
                    reading.project_id, reading.device_id, item.partition, first_seen=at
                )
            presence.partition = item.partition
            if reading.tags or presence.tags:
                presence.tags = list(reading.tags)
            presence.last_event_id = reading.event_id
            # Stored only where a rule watches it: elsewhere it costs no write.
            presence.changed = presence.changed or bool(watching) or bool(presence.open)
            seen = presence.seen
            if at > seen.get(ANY_READING, NEVER):
                seen[ANY_READING] = at
            for rule in watching:
                metric = rule.metric
                if (
                    metric is not None
                    and metric in reading.metrics
                    and at > seen.get(metric, NEVER)
                ):
                    seen[metric] = at
            for rule_id, alert in presence.open.items():
                if (key, rule_id) in self._closing:
                    continue
                if alert["metric"] == ANY_READING or alert["metric"] in reading.metrics:
                    quiet = silenced(silences, reading.project_id, rule_id, reading.device_id, at)
                    ended = resolved_transition(alert, at, "reported", quiet)
                    self._closing.add((key, rule_id))
                    self._decided(TransitionToRecord(ended, item.partition))

    def judge(self, rules: RuleIndex, silences: Sequence[Silence], now: datetime) -> int:
        """Open the alerts of the silences that fire now (to be written before they are
        recorded), and resolve the open alerts whose rule no longer covers the device
        (deleted, disabled, rescoped); return how many silences fired."""
        fired = 0
        clocks: dict[int, datetime | None] = {}
        for key, presence in self.devices.items():
            if presence.partition not in self._owned.assigned:
                continue
            for rule_id, alert in presence.open.items():
                rule = rules.by_id.get(rule_id)
                gone = rule is None or not rule.covers(presence.device_id, presence.tags)
                if gone and (key, rule_id) not in self._closing:
                    self._closing.add((key, rule_id))
                    project, device = presence.project_id, presence.device_id
                    quiet = silenced(silences, project, rule_id, device, now)
                    ended = resolved_transition(alert, now, "rule_changed", quiet)
                    self._decided(TransitionToRecord(ended, presence.partition))
            watching = rules.absent.get(presence.project_id)
            if not watching:
                continue
            if not presence.stored and any(
                r.covers(presence.device_id, presence.tags) for r in watching
            ):
                # A rule watches it now: stored, to outlive a restart.
                presence.changed = presence.urgent = True
            partition = presence.partition
            if partition not in clocks:
                clocks[partition] = self._progress.clock(partition, now)
            clock = clocks[partition]
            if clock is None:
                continue
            for rule, since in due(presence, watching, clock):
                alert = absent_alert(rule, presence, since, now)
                alert["silenced"] = silenced(
                    silences, rule.project_id, rule.rule_id, presence.device_id, now
                )
                presence.open[rule.rule_id] = alert
                presence.changed = presence.urgent = True
                opened = Transition("fired", alert, alert["fired_at"], notify=not alert["silenced"])
                self._decided(TransitionToRecord(opened, presence.partition))
                fired += 1
        return fired

    def settle(self, recorded: Iterable[TransitionToRecord]) -> None:
        """These transitions are recorded: close in memory the alerts they resolved."""
        for raised in recorded:
            transition = raised.transition
            self._to_record.pop(transition.notification_id, None)
            if transition.kind != "resolved":
                continue
            key = scoped_id(transition.alert["project_id"], transition.alert["device_id"])
            rule_id = transition.alert["rule_id"]
            self._closing.discard((key, rule_id))
            presence = self.devices.get(key)
            if presence is not None and rule_id in presence.open:
                del presence.open[rule_id]
                presence.changed = presence.urgent = True

    def unsettle(self) -> None:
        """A batch failed before its transitions were recorded: its replay decides them
        again, from the alerts still open."""
        for raised in list(self._to_record.values()):
            if raised.transition.kind == "resolved":
                del self._to_record[raised.transition.notification_id]
        self._closing.clear()

    async def write(self, urgent_only: bool = False) -> set[int]:
        """Write the presence that changed (``urgent_only``: only where open alerts
        changed; the rest, only newer receipt times, waits for the checkpoint), each
        under its partition's epoch; return the partitions found claimed by a newer
        owner (their presence is let go)."""
        lost: set[int] = set()
        for _ in range(MAX_ROUNDS):
            pending = [
                p
                for p in self.devices.values()
                if p.changed and (p.urgent or not urgent_only) and p.partition not in lost
            ]
            if not pending:
                return lost
            epochs, revoked = await self._owned.epochs({p.partition for p in pending})
            if revoked:
                lost |= revoked
                self.forget(revoked)
                pending = [p for p in pending if p.partition not in lost]
            # Inserted if never stored (a third of the cost); found stored after all
            # (by an older owner), replaced, fenced, in the next round.
            result = await write_fenced(
                self._db[DEVICE_PRESENCE],
                [p for p in pending if not p.stored],
                [p for p in pending if p.stored],
                partial(_document_under, epochs),
                lambda doc: int(doc["_e"]),
            )
            newer: dict[int, int] = {}
            if result.fenced:
                async for doc in self._db[DEVICE_PRESENCE].find(
                    {"_id": {"$in": list(result.fenced)}}, {"_e": 1, "partition": 1}
                ):
                    partition = doc["partition"]
                    if doc["_e"] > epochs.get(partition, 0):
                        newer[partition] = max(newer.get(partition, 0), doc["_e"])
            for presence in pending:
                if presence.key in result.existing:
                    presence.stored = True  # still changed: replaced in the next round
                elif presence.partition not in newer:
                    presence.changed = presence.urgent = False
                    presence.stored = True
            gone = await self._owned.lost_or_reclaimed(newer)
            if gone:
                lost |= gone
                self.forget(gone)
                self._owned.release(gone)
        raise RuntimeError(f"device presence kept changing during {MAX_ROUNDS} rounds")
