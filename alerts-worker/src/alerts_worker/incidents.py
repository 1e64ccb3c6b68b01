"""Where a batch of readings becomes alert transitions: every rule on every reading, no I/O.

Each (rule, device) state carries the offsets it has taken in (per-partition
watermarks), so a reading replayed after a crash or a rebalance is skipped by
the states that already took it: the same incident yields the same transitions
once. An open alert whose rule was deleted, disabled or no longer covers the
device resolves with the device's next reading (``resolved_reason`` says why).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from telemetry_common.domain.alert_rules import Rule, Silence, silenced
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, scoped_id
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.versioned import Watermarks

from alerts_worker.rules import (
    MetricValue,
    RuleState,
    Transition,
    decide,
    evaluate,
    learn,
    resolve,
)


def state_id(rule_id: str, device_id: str) -> str:
    # `|` occurs in neither a rule id nor a device id, so the id is unambiguous.
    return f"{rule_id}|{device_id}"


@dataclass(slots=True)
class RuleDeviceState:
    """One (rule, device) state held for an owned partition, and what this batch did to it."""

    rule_id: str
    device_id: str
    # The rule's project, which is the device's (a rule judges its own project's
    # readings only, and device ids are unique within a project).
    project_id: str = DEFAULT_PROJECT
    state: RuleState = field(default_factory=RuleState)
    watermarks: Watermarks = field(default_factory=Watermarks)
    # Whether the store holds a document for it.
    stored: bool = False
    changed: bool = False
    # It raised a transition not written with it yet (written with its batch, the
    # others at the checkpoint).
    alerting: bool = False
    # Nothing worth keeping (``RuleState.is_idle``) after the last reading taken.
    idle: bool = False
    # Idle at the last checkpoint, having taken nothing past what it committed. Only
    # then may a stored state be deleted: a replay from there evaluates its readings
    # from scratch, which decides the same as evaluating them from an idle state,
    # but not the same as from the state that the first readings since made idle
    # (their incident would fire again), nor as from a state whose watermarks skip
    # readings it took before a crash.
    idle_before: bool = False
    # It has taken a reading since it was read from the store: its watermarks are
    # this worker's, not perhaps ahead of the commit it replays from.
    caught_up: bool = True
    # Its rule no longer applies to the device: no replay evaluates it again.
    rule_gone: bool = False

    # Unique across projects as it is: a rule belongs to one project.
    doc_id: str = field(init=False, repr=False, compare=False)
    device_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked for every state a batch meets: computed once.
        self.doc_id = state_id(self.rule_id, self.device_id)
        self.device_key = scoped_id(self.project_id, self.device_id)

    def take_if_new(self, item: Consumed[Reading]) -> bool:
        """Whether this reading is new to the state; marks it taken."""
        if not self.watermarks.take(item.partition, item.offset):
            return False
        self.changed = self.caught_up = True
        return True

    def to_document(self, epoch: int, now: datetime) -> dict[str, Any]:
        return {
            "_id": self.doc_id,
            "rule_id": self.rule_id,
            "device_id": self.device_id,
            "project_id": self.project_id,
            **self.state.to_fields(),
            "_applied": self.watermarks.by_partition,
            "idle": self.idle,
            "_e": epoch,
            "updated_at": now,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> RuleDeviceState:
        return cls(
            rule_id=doc["rule_id"],
            device_id=doc["device_id"],
            project_id=doc.get("project_id", DEFAULT_PROJECT),
            state=RuleState.from_fields(doc),
            watermarks=Watermarks(dict(doc.get("_applied", {}))),
            stored=True,
            idle=doc.get("idle", False),
            caught_up=False,
        )


@dataclass(frozen=True, slots=True)
class TransitionToRecord:
    """A transition and the partition of the reading that caused it."""

    transition: Transition
    partition: int


@dataclass(slots=True)
class QuietBand:
    """The values of one metric that concern none of its threshold rules (``Rule.may_matter``).

    Only when every threshold rule on the metric covers all devices and compares
    with >, >=, < or <= is the band exact (``usable``); otherwise each rule is
    asked. Rate and anomaly rules are not in it: they learn from every value, and
    are asked of each (``RuleIndex.learning``).
    """

    rule_ids: frozenset[str] = frozenset()
    usable: bool = True
    # Quiet: value <= at_most_gt, < below_ge, >= at_least_lt and > above_le.
    at_most_gt: float = math.inf
    below_ge: float = math.inf
    at_least_lt: float = -math.inf
    above_le: float = -math.inf

    def add(self, rule: Rule) -> None:
        self.rule_ids |= {rule.rule_id}
        if rule.scope != "all":
            self.usable = False
        elif rule.operator == ">":
            self.at_most_gt = min(self.at_most_gt, *rule.limits)
        elif rule.operator == ">=":
            self.below_ge = min(self.below_ge, *rule.limits)
        elif rule.operator == "<":
            self.at_least_lt = max(self.at_least_lt, *rule.limits)
        elif rule.operator == "<=":
            self.above_le = max(self.above_le, *rule.limits)
        else:
            self.usable = False

    def holds(self, value: float) -> bool:
        return (
            self.usable
            and value <= self.at_most_gt
            and value < self.below_ge
            and value >= self.at_least_lt
            and value > self.above_le
        )


class RuleIndex:
    """Enabled rules by project and the metric names they watch, so a reading meets only
    its own project's rules on its own metrics."""

    def __init__(self, rules: Iterable[Rule]):
        self.by_id = {rule.rule_id: rule for rule in rules if rule.enabled}
        # Threshold rules by project and metric name.
        self.by_metric: dict[tuple[str, str], list[Rule]] = {}
        # Rate and anomaly rules by project: every value of their metric is theirs to
        # learn, so they are asked of every reading (a project has few of them, fewer
        # than a reading has metrics to look up).
        self.learning: dict[str, list[Rule]] = {}
        # Absent rules by project: judged on silence (``absence.py``), not on values.
        self.absent: dict[str, list[Rule]] = {}
        self._quiet: dict[tuple[str, str], QuietBand] = {}
        for rule in self.by_id.values():
            if rule.kind == "absent":
                self.absent.setdefault(rule.project_id, []).append(rule)
                continue
            if rule.kind != "threshold":
                self.learning.setdefault(rule.project_id, []).append(rule)
                continue
            for name in rule.metric_names:
                key = (rule.project_id, name)
                self.by_metric.setdefault(key, []).append(rule)
                self._quiet.setdefault(key, QuietBand()).add(rule)

    def quiet_count(self, reading: Reading) -> int | None:
        """How many threshold rules apply to a reading that concerns none of them; None if
        one may be concerned (or the band cannot tell), and each rule must judge it."""
        project = reading.project_id
        quiet = self._quiet
        watched: list[QuietBand] = []
        for name, value in reading.metrics.items():
            band = quiet.get((project, name))
            if band is not None:
                if not band.holds(value):
                    return None
                watched.append(band)
        if len(watched) == 1:
            return len(watched[0].rule_ids)
        return len(frozenset().union(*(band.rule_ids for band in watched)))

    def for_reading(self, reading: Reading) -> list[Rule]:
        """The threshold rules that take this reading."""
        return self._covering(reading, self.by_metric)

    @staticmethod
    def _covering(reading: Reading, rules: dict[tuple[str, str], list[Rule]]) -> list[Rule]:
        seen: dict[str, Rule] = {}
        for metric in reading.metrics:
            for rule in rules.get((reading.project_id, metric), ()):
                if rule.rule_id not in seen and rule.covers(reading.device_id, reading.tags):
                    seen[rule.rule_id] = rule
        return list(seen.values())


@dataclass
class BatchOutcome:
    raised: list[TransitionToRecord] = field(default_factory=list)
    evaluations: int = 0


def evaluate_batch(
    items: Sequence[Consumed[Reading]],
    rules: RuleIndex,
    tracked: dict[str, RuleDeviceState],
    silences: Sequence[Silence],
    now: datetime,
    device_clocks: dict[str, datetime] | None = None,
) -> BatchOutcome:
    """Evaluate every reading in arrival order; updates ``tracked`` in place.

    ``device_clocks``: the newest reading time seen per device (by its id within its
    project, ``scoped_id``), kept by the caller between batches and updated here. A
    state made for a device starts at its device's clock, so a late reading (a
    device's retry that arrived after newer readings) whose rule state was already
    let go opens no incident in the past,
    overlapping one that closed since.
    """
    outcome = BatchOutcome()
    clocks = {} if device_clocks is None else device_clocks
    # Device (by its id within its project) -> rule id -> its state.
    by_device: dict[str, dict[str, RuleDeviceState]] = {}
    for held in tracked.values():
        by_device.setdefault(held.device_key, {})[held.rule_id] = held

    def silenced_now(project_id: str, rule_id: str, device_id: str) -> bool:
        return bool(silences) and silenced(silences, project_id, rule_id, device_id, now)

    for item in items:
        reading = item.value
        device_id, project_id = reading.device_id, reading.project_id
        device_key = scoped_id(project_id, device_id)
        device_clock = clocks.get(device_key)
        if device_clock is None or reading.ts > device_clock:
            clocks[device_key] = reading.ts
        device_states = by_device.get(device_key)
        learning = rules.learning.get(project_id)
        # The common case, decided for all threshold rules at once: a value that
        # concerns none of them leaves idle each one without a state for the device.
        quiet = rules.quiet_count(reading)
        if quiet is None:
            applicable = rules.for_reading(reading)
        else:
            # A threshold rule with a state for the device takes even a quiet value:
            # it may clear an alert, or fill a k-of-n window.
            applicable = []
            for rule_id in device_states or ():
                rule = rules.by_id.get(rule_id)
                if (
                    rule is not None
                    and rule.kind == "threshold"
                    and rule.value_in(reading.metrics) is not None
                    and rule.covers(device_id, reading.tags)
                ):
                    applicable.append(rule)
            outcome.evaluations += quiet - len(applicable)
            if not applicable and not device_states and not learning:
                continue
        for rule in applicable:
            found = rule.value_in(reading.metrics)
            assert found is not None  # the index chose the rule by this metric
            t = device_states.get(rule.rule_id) if device_states else None
            if t is None:
                if not rule.may_matter(found[1]):
                    # No state and a value that leaves it idle: the common case, and
                    # nothing to keep (a replay of it decides nothing either).
                    outcome.evaluations += 1
                    continue
                t = _track(rule, device_id, project_id, device_clock, tracked, by_device)
                device_states = by_device[device_key]
            if not t.take_if_new(item):
                continue
            outcome.evaluations += 1
            seen = MetricValue(reading.event_id, device_id, found[0], found[1], reading.ts)
            transition = evaluate(
                rule, t.state, seen, now, silenced_now(project_id, rule.rule_id, device_id)
            )
            t.idle = t.state.is_idle(rule)
            if transition is not None:
                t.alerting = True
                outcome.raised.append(TransitionToRecord(transition, item.partition))
        # Rate and anomaly rules learn from every value: never idle (``RuleState.is_idle``).
        for rule in learning or ():
            found = rule.value_in(reading.metrics)
            if found is None or not rule.covers(device_id, reading.tags):
                continue
            t = device_states.get(rule.rule_id) if device_states else None
            if t is None:
                t = _track(rule, device_id, project_id, device_clock, tracked, by_device)
                device_states = by_device[device_key]
            if not t.take_if_new(item):
                continue
            outcome.evaluations += 1
            judged = learn(rule, t.state, found[1], reading.ts)
            if judged is None:
                continue
            seen = MetricValue(reading.event_id, device_id, found[0], found[1], reading.ts)
            assert t.state.clock is not None  # learn set it
            transition = decide(
                rule,
                t.state,
                judged,
                seen,
                t.state.clock,
                now,
                silenced_now(project_id, rule.rule_id, device_id),
            )
            if transition is not None:
                t.alerting = True
                outcome.raised.append(TransitionToRecord(transition, item.partition))
        for t in (device_states or {}).values():
            if t.state.alert is None or _still_applies(t.rule_id, rules, reading):
                continue
            if t.take_if_new(item):
                at = reading.ts if t.state.clock is None else max(t.state.clock, reading.ts)
                transition = resolve(
                    t.state, at, "rule_changed", silenced_now(project_id, t.rule_id, device_id)
                )
                # Its rule no longer applies, so a replay cannot fire it again: the
                # state goes at once instead of lingering for a reading that never comes.
                t.idle = t.rule_gone = True
                t.alerting = True
                outcome.raised.append(TransitionToRecord(transition, item.partition))
    return outcome


def _track(
    rule: Rule,
    device_id: str,
    project_id: str,
    device_clock: datetime | None,
    tracked: dict[str, RuleDeviceState],
    by_device: dict[str, dict[str, RuleDeviceState]],
) -> RuleDeviceState:
    """A new state for the rule and device, starting at the device's clock."""
    t = RuleDeviceState(rule.rule_id, device_id, project_id)
    t.state.clock = device_clock
    tracked[t.doc_id] = t
    by_device.setdefault(t.device_key, {})[rule.rule_id] = t
    return t


def _still_applies(rule_id: str, rules: RuleIndex, reading: Reading) -> bool:
    rule = rules.by_id.get(rule_id)
    # Deleted, disabled, or its scope no longer takes this device (a reading
    # without the rule's metric still keeps the alert as it is).
    return rule is not None and rule.covers(reading.device_id, reading.tags)
