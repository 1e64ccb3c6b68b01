"""Where a reading is evaluated: one rule's state for one device, pure and unit-tested.

Each (rule, device) keeps what its kind judges by (a threshold rule the values of
the device's last readings of its metric, an anomaly rule a baseline, a rate rule
the samples within its window), when its condition began to hold, when its last
alert fired and the alert still open. :func:`evaluate` folds one reading into
that state and says whether an alert fired or resolved; a rate or anomaly rule
takes every value, so the worker asks :func:`learn` first and :func:`decide` only
when the value may fire or resolve an alert.

Time is reading time (``ts``), never the worker's clock, so a replay of the same
readings reaches the same decisions. Readings are taken in arrival order (one
device's readings keep their order within a Kafka partition): a late reading
(older ``ts`` than one already seen) still counts as the newest of the k-of-n
window, but it never moves the rule's clock back, so `for` and `cooldown` are
measured on the newest reading time seen (a new state starts at its device's
newest reading time: see ``incidents.evaluate_batch``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from telemetry_common.domain.alert_rules import BUILTIN_RELATIONS, RELATIONS, Rule

from alerts_worker.documents import AlertFields, TransitionKind


@dataclass(slots=True)
class RuleState:
    # (event_id, value) of the last n readings, oldest first: the k-of-n window.
    # (A device's retry of a reading never gets here: the worker drops second
    # copies by event id first, so the window need not remember more.)
    recent: list[tuple[str, float]] = field(default_factory=list)
    pending_since: datetime | None = None
    clock: datetime | None = None
    last_fired_at: datetime | None = None
    # The open alert's fields; None when no alert is active.
    alert: AlertFields | None = None
    # Anomaly rules: the device's baseline, [values learned, mean, variance].
    baseline: list[float] | None = None
    # Rate rules: [epoch seconds, value] of the readings within the rule's window.
    samples: list[list[float]] = field(default_factory=list)

    def to_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            # (BSON stores each pair, a tuple, as an array.)
            "recent": list(self.recent),
            "pending_since": self.pending_since,
            "clock": self.clock,
            "last_fired_at": self.last_fired_at,
            "alert": self.alert,
        }
        # Copies: both are learned in place.
        if self.baseline is not None:
            fields["baseline"] = list(self.baseline)
        if self.samples:
            fields["samples"] = list(self.samples)
        return fields

    def is_idle(self, rule: Rule) -> bool:
        """Whether this state decides nothing a fresh one would not: then it need not be kept.

        Nothing open or pending, no value in the window past the threshold or the
        clear threshold, no cooldown running. Most readings leave their rules'
        states idle, so most readings cost no state write.
        """
        if rule.kind != "threshold":
            return False  # its baseline or window is what it judges the next value by
        if self.alert is not None or self.pending_since is not None:
            return False
        if self.last_fired_at is not None and rule.cooldown_s > 0:
            if self.clock is None or self.clock - self.last_fired_at < rule.cooldown_span:
                return False
        return not any(rule.may_matter(value) for _, value in self.recent)

    @classmethod
    def from_fields(cls, doc: dict[str, Any]) -> RuleState:
        return cls(
            recent=[(event_id, value) for event_id, value in doc.get("recent", [])],
            pending_since=doc.get("pending_since"),
            clock=doc.get("clock"),
            last_fired_at=doc.get("last_fired_at"),
            alert=doc.get("alert"),
            baseline=doc.get("baseline"),
            samples=doc.get("samples", []),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    kind: TransitionKind
    # The alert's fields after the transition.
    alert: AlertFields
    at: datetime
    # False when a silence covers it: recorded, not announced.
    notify: bool = True

    @property
    def notification_id(self) -> str:
        return f"{self.alert['alert_id']}:{self.kind}"


class MetricValue(NamedTuple):
    """One reading's value of a rule's metric (a tuple: made for every rule a reading
    meets, and a frozen dataclass costs several times as much to make)."""

    event_id: str
    device_id: str
    metric: str
    value: float
    ts: datetime


def severity_of(rule: Rule, value: float) -> str:
    if rule.critical_beyond is not None and abs(value - rule.limit) > rule.critical_beyond:
        return "critical"
    return rule.severity


def message_of(rule: Rule, seen: MetricValue, judged: Judged) -> str:
    if rule.sensor is not None and rule.operator is not None:
        # Built-in: the wording alert consumers already parse.
        relation = BUILTIN_RELATIONS[rule.operator]
        return (
            f"{rule.sensor.capitalize()} {seen.value:g}{rule.unit} on {seen.device_id} "
            f"is {relation} {rule.limit:g}{rule.unit}"
        )
    if rule.kind == "anomaly":
        return (
            f"{rule.name}: {seen.metric} {seen.value:g} on {seen.device_id} is "
            f"{judged.signal:.1f} standard deviations from its usual {judged.usual:g}"
        )
    assert rule.operator is not None
    if rule.kind == "rate":
        return (
            f"{rule.name}: {seen.metric} on {seen.device_id} changes {judged.signal:+g}/s "
            f"over {rule.window}, {RELATIONS[rule.operator]} {rule.limit:g}/s"
        )
    window = f" in {rule.k} of the last {rule.n} readings" if rule.n > 1 else ""
    return (
        f"{rule.name}: {seen.metric} {seen.value:g} on {seen.device_id} is "
        f"{RELATIONS[rule.operator]} {rule.limit:g}{window}"
    )


def _breaches(rule: Rule, values: list[float], limit: float) -> bool:
    check = rule.compare
    return sum(1 for value in values if check(value, limit)) >= rule.k


# How fast an anomaly baseline forgets once warm: about the last 1/SMOOTHING values.
ANOMALY_SMOOTHING = 0.05


class Judged(NamedTuple):
    """A reading judged by a rate or anomaly rule: whether it fires the rule, whether it
    keeps an open alert open, and the figure it was judged by (rate, or deviations)."""

    fires: bool
    holds: bool
    signal: float = 0.0
    usual: float = 0.0


NOT_YET = Judged(fires=False, holds=False)


def judge_anomaly(rule: Rule, state: RuleState, value: float) -> Judged:
    """How far ``value`` is from the device's baseline (in standard deviations), then
    the value learned: an exponentially weighted mean and variance, exact (Welford's)
    over the first values and forgetting slowly after."""
    baseline = state.baseline
    if baseline is None:
        baseline = state.baseline = [0.0, 0.0, 0.0]
    count, mean, variance = baseline
    judged = NOT_YET
    if count >= rule.warmup:
        spread = math.sqrt(variance)
        if spread > 0:
            deviations = abs(value - mean) / spread
        else:
            deviations = 0.0 if value == mean else math.inf
        judged = Judged(
            deviations > rule.deviations, deviations > rule.clear_at_deviations, deviations, mean
        )
    count += 1
    weight = max(ANOMALY_SMOOTHING, 1 / count)
    difference = value - mean
    # In place: learned on every reading, the baseline is not made anew each time.
    baseline[0] = count
    baseline[1] = mean + weight * difference
    baseline[2] = (1 - weight) * (variance + difference * weight * difference)
    return judged


def judge_rate(rule: Rule, state: RuleState, value: float, at: datetime) -> Judged:
    """The value's change per second from the oldest of the device's readings within the
    rule's window to the newest, compared with the threshold."""
    now = at.timestamp()
    samples = state.samples
    # Oldest first; a device's readings mostly come in order, so a new one goes last.
    if not samples or samples[-1][0] <= now:
        samples.append([now, value])
    else:
        bisect.insort(samples, [now, value])
    # Measured back from this reading's time (a late reading is judged by its own window).
    cutoff = now - rule.window_s
    stale = 0
    while samples[stale][0] < cutoff:
        stale += 1
    if stale:
        del samples[:stale]
    (first_at, first), (last_at, last) = samples[0], samples[-1]
    if last_at <= first_at:
        return NOT_YET
    rate = (last - first) / (last_at - first_at)
    return Judged(rule.compare(rate, rule.limit), rule.compare(rate, rule.clear_limit), rate)


def evaluate(
    rule: Rule, state: RuleState, seen: MetricValue, now: datetime, silenced: bool = False
) -> Transition | None:
    """Fold one reading into ``state``; the transition it causes, if any.

    ``now`` only stamps a new alert's ``created_at``; every decision is on reading
    time. ``silenced``: a silence covers this rule and device now.
    """
    if rule.kind != "threshold":
        learned = learn(rule, state, seen.value, seen.ts)
        if learned is None:
            return None
        assert state.clock is not None  # learn set it
        return decide(rule, state, learned, seen, state.clock, now, silenced)
    for event_id, _ in state.recent:
        if event_id == seen.event_id:
            return None  # the device sent this reading again
    state.recent.append((seen.event_id, seen.value))
    del state.recent[: -rule.n]
    clock = seen.ts if state.clock is None else max(state.clock, seen.ts)
    state.clock = clock
    window = [value for _, value in state.recent[-rule.n :]]
    # Hysteresis: an active alert holds until values are past the clear threshold.
    judged = (
        Judged(False, _breaches(rule, window, rule.clear_limit))
        if state.alert is not None
        else Judged(_breaches(rule, window, rule.limit), False)
    )
    return decide(rule, state, judged, seen, clock, now, silenced)


def learn(rule: Rule, state: RuleState, value: float, ts: datetime) -> Judged | None:
    """A rate or anomaly rule takes a value: judged, then learned. The judgement, or None
    when it can change nothing (it fires nothing and no alert is open): the common case,
    which then costs no more.

    It keeps no window of event ids: the worker drops a device's second copies of a
    reading before evaluating (``store.drop_retries``), and its states' watermarks
    skip a replay.
    """
    clock = state.clock
    if clock is None or ts > clock:
        state.clock = ts
    if rule.kind == "anomaly":
        judged = judge_anomaly(rule, state, value)
    else:
        judged = judge_rate(rule, state, value, ts)
    if state.alert is None and not judged.fires:
        state.pending_since = None
        return None
    return judged


def decide(
    rule: Rule,
    state: RuleState,
    judged: Judged,
    seen: MetricValue,
    clock: datetime,
    now: datetime,
    silenced: bool,
) -> Transition | None:
    """What a judged value does to the rule's alert: resolves it, holds it, starts
    the `for` span, or fires (past the span and the cooldown)."""
    if state.alert is not None:
        if judged.holds:
            return None
        return resolve(state, clock, "cleared", silenced)

    if not judged.fires:
        state.pending_since = None
        return None
    if state.pending_since is None:
        state.pending_since = clock
    if clock - state.pending_since < rule.for_span:
        return None
    if state.last_fired_at is not None and clock - state.last_fired_at < rule.cooldown_span:
        return None
    state.last_fired_at = clock
    state.alert = {
        # One alert per incident; the reading that fired it names it, so a replay
        # of the same reading names the same alert.
        "alert_id": f"{seen.event_id}:{rule.rule_id}",
        "event_id": seen.event_id,
        "project_id": rule.project_id,
        "device_id": seen.device_id,
        # Named as the reading named the metric (`temperature_c` for a flat reading,
        # `temp` for the general form), as the system this one replaces does.
        "sensor_type": seen.metric,
        "metric": seen.metric,
        "value": seen.value,
        # An anomaly's threshold is its number of deviations.
        "threshold": rule.deviations if rule.kind == "anomaly" else rule.limit,
        "alert_type": rule.alert_type_of(seen.metric),
        "severity": severity_of(rule, seen.value),
        "message": message_of(rule, seen, judged),
        "timestamp": seen.ts,
        "created_at": now,
        "rule_id": rule.rule_id,
        "rule_name": rule.name,
        "status": "active",
        "fired_at": clock,
        "resolved_at": None,
        "silenced": silenced,
    }
    return Transition("fired", state.alert.copy(), clock, notify=not silenced)


def resolve(state: RuleState, at: datetime, reason: str, silenced: bool = False) -> Transition:
    """Close the open alert: its condition cleared, or its rule no longer applies.

    An alert whose firing was silenced resolves silently too: nobody was told it began.
    """
    assert state.alert is not None
    transition = resolved_transition(state.alert, at, reason, silenced)
    state.alert = None
    state.pending_since = None
    return transition


def resolved_transition(
    alert: AlertFields, at: datetime, reason: str, silenced: bool = False
) -> Transition:
    """An open alert's end, whatever kind of rule raised it. One that fired silenced
    ends silently too: nobody was told it began."""
    closed: AlertFields = {
        **alert,
        "status": "resolved",
        "resolved_at": at,
        "resolved_reason": reason,
    }
    return Transition("resolved", closed, at, notify=not (silenced or alert["silenced"]))
