"""Unit tests for alerts_worker.rules: one rule's state on one device, reading by reading."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alerts_worker.rules import MetricValue, RuleState, Transition, evaluate
from hypothesis import given
from hypothesis import strategies as st
from telemetry_common.domain.alert_rules import (
    OPERATORS,
    Rule,
    RuleCreate,
    RuleError,
    builtin_rules,
    check_rule,
)

T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)
NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)
BUILTIN = {doc["_id"]: Rule.model_validate(doc) for doc in builtin_rules(-10, 50, 0, 100)}


def rule(**fields: Any) -> Rule:
    doc = {"_id": "r-1", "name": "Hot", "metric": "t", "operator": ">", "threshold": 30.0}
    return Rule.model_validate({**doc, **fields})


class Device:
    """Feeds values to one rule, one reading every ``step`` seconds, and keeps the transitions."""

    def __init__(self, rule: Rule, step_s: float = 10):
        self.rule = rule
        self.state = RuleState()
        self.step = timedelta(seconds=step_s)
        self.count = 0
        self.transitions: list[Transition] = []

    def send(self, *values: float, ts: datetime | None = None) -> list[str]:
        """The transitions these values cause, as 'fired' / 'resolved'."""
        kinds = []
        for value in values:
            at = ts or T0 + self.count * self.step
            seen = MetricValue(f"e{self.count}", "dev-1", self.rule.metric, value, at)
            self.count += 1
            transition = evaluate(self.rule, self.state, seen, NOW)
            if transition is not None:
                self.transitions.append(transition)
                kinds.append(transition.kind)
        return kinds

    @property
    def active(self) -> bool:
        return self.state.alert is not None


@pytest.mark.parametrize(
    ("operator", "breaching", "clear"),
    [
        (">", [31, 1e9], [30, 29, -5]),
        (">=", [30, 31], [29.99, -1]),
        ("<", [29.99, -40], [30, 31]),
        ("<=", [30, 0], [30.01, 99]),
        ("==", [30], [30.5, 29.5]),
        ("!=", [31, 29], [30]),
    ],
)
def test_each_operator_fires_on_its_breach_and_resolves_when_clear(
    operator: str, breaching: list[float], clear: list[float]
) -> None:
    for bad in breaching:
        for good in clear:
            device = Device(rule(operator=operator))
            assert device.send(good) == []
            assert device.send(bad) == ["fired"]
            assert device.send(bad) == []
            assert device.send(good) == ["resolved"]


def test_fired_alert_carries_the_contract_fields() -> None:
    device = Device(rule(severity="critical"))
    device.send(20, 35)
    [fired] = device.transitions
    alert = fired.alert
    assert alert["alert_id"] == "e1:r-1"
    assert fired.notification_id == "e1:r-1:fired"
    assert (alert["status"], alert["severity"], alert["value"], alert["threshold"]) == (
        "active",
        "critical",
        35,
        30.0,
    )
    assert (alert["rule_id"], alert["rule_name"], alert["device_id"]) == ("r-1", "Hot", "dev-1")
    assert alert["fired_at"] == alert["timestamp"] == T0 + timedelta(seconds=10)
    assert alert["created_at"] == NOW
    assert alert["message"] == "Hot: t 35 on dev-1 is above 30"
    device.send(10)
    resolved = device.transitions[-1]
    assert resolved.alert["alert_id"] == "e1:r-1"
    assert resolved.alert["status"] == "resolved"
    assert resolved.alert["resolved_at"] == resolved.at == T0 + timedelta(seconds=20)


def test_k_of_n_needs_k_breaches_among_the_last_n() -> None:
    device = Device(rule(k=3, n=5))
    assert device.send(31, 0, 31, 0) == []
    assert device.send(31) == ["fired"]  # 31, 0, 31, 0, 31
    assert device.send(31) == []  # 0, 31, 0, 31, 31: still 3 of 5
    assert device.send(0) == []  # 31, 0, 31, 31, 0
    assert device.send(0) == ["resolved"]  # 0, 31, 31, 0, 0


def test_k_of_n_resolves_when_fewer_than_k_of_the_last_n_breach() -> None:
    device = Device(rule(k=2, n=3))
    assert device.send(31, 31) == ["fired"]
    assert device.send(0) == []  # 31, 31, 0: still 2 of 3
    assert device.send(0) == ["resolved"]  # 31, 0, 0


def test_a_single_breach_among_n_does_not_fire() -> None:
    device = Device(rule(k=2, n=10))
    assert device.send(*[0] * 5, 99, *[0] * 10) == []


def test_for_duration_must_hold_in_reading_time() -> None:
    device = Device(rule(**{"for": "1m"}), step_s=20)
    assert device.send(31, 31, 31) == []  # 0 s, 20 s, 40 s
    assert device.send(31) == ["fired"]  # 60 s after the condition began
    device = Device(rule(**{"for": "1m"}), step_s=20)
    assert device.send(31, 31, 0, 31, 31, 31) == []  # the clear reading restarts the wait
    assert device.send(31) == ["fired"]


def test_cooldown_holds_the_next_alert_back_in_reading_time() -> None:
    device = Device(rule(cooldown="5m"), step_s=60)
    assert device.send(31) == ["fired"]
    assert device.send(0) == ["resolved"]
    assert device.send(31, 31, 31) == []  # 2, 3, 4 minutes after the first fired
    assert device.send(31) == ["fired"]  # 5 minutes after


def test_hysteresis_holds_an_alert_until_values_pass_the_clear_threshold() -> None:
    device = Device(rule(clear_threshold=25.0))
    assert device.send(31) == ["fired"]
    # Hovering around the threshold: no flapping.
    assert device.send(29, 31, 27, 30.5, 25.5) == []
    assert device.send(25) == ["resolved"]
    # Once resolved, the threshold itself fires again.
    assert device.send(28) == []
    assert device.send(30.5) == ["fired"]


def test_hysteresis_of_a_low_rule_is_above_the_threshold() -> None:
    device = Device(rule(operator="<", threshold=10.0, clear_threshold=12.0))
    assert device.send(9) == ["fired"]
    assert device.send(11.9) == []
    assert device.send(12) == ["resolved"]


def test_a_repeated_reading_is_counted_once() -> None:
    r = rule(k=2, n=2)
    state = RuleState()
    same = MetricValue("e-1", "dev-1", "t", 99, T0)
    assert evaluate(r, state, same, NOW) is None
    assert evaluate(r, state, same, NOW) is None  # a retry, not a second breach
    assert state.alert is None


def test_a_late_reading_counts_in_the_window_but_does_not_move_the_clock_back() -> None:
    device = Device(rule(**{"for": "30s"}), step_s=20)
    assert device.send(31, 31) == []  # 0 s, 20 s
    late = T0 - timedelta(minutes=5)
    assert device.send(31, ts=late) == []  # the clock stays at 20 s
    assert device.state.clock == T0 + timedelta(seconds=20)
    assert device.send(31, ts=T0 + timedelta(seconds=30)) == ["fired"]


def test_silenced_transitions_are_recorded_but_not_announced() -> None:
    r = rule()
    state = RuleState()
    fired = evaluate(r, state, MetricValue("e1", "dev-1", "t", 31, T0), NOW, silenced=True)
    assert fired is not None and fired.kind == "fired" and not fired.notify
    # The silence is over by the time it resolves; nobody heard it fire, so it stays quiet.
    resolved = evaluate(r, state, MetricValue("e2", "dev-1", "t", 0, T0), NOW, silenced=False)
    assert resolved is not None and resolved.kind == "resolved" and not resolved.notify


# --- the built-in rules: the seed's environment thresholds --------------------------------


@pytest.mark.parametrize(
    ("rule_id", "value", "severity"),
    [
        ("temperature_high", 50.01, "warning"),
        ("temperature_high", 60, "warning"),
        ("temperature_high", 61, "critical"),
        ("temperature_low", -12, "warning"),
        ("temperature_low", -13, "critical"),
        ("humidity_high", 120, "warning"),
        ("humidity_high", 125, "critical"),
        ("humidity_low", -20, "warning"),  # threshold 0: 20% of the 0..100 band
        ("humidity_low", -25, "critical"),
    ],
)
def test_builtin_severity_follows_the_seed(rule_id: str, value: float, severity: str) -> None:
    device = Device(BUILTIN[rule_id])
    assert device.send(value) == ["fired"]
    assert device.transitions[0].alert["severity"] == severity
    # Named by the metric the reading sent (the flat form's temperature_c).
    metric, word = BUILTIN[rule_id].metric, rule_id.rsplit("_", 1)[1]
    assert device.transitions[0].alert["alert_type"] == f"{metric}_{word}"
    assert device.transitions[0].alert["sensor_type"] == metric


@pytest.mark.parametrize("value", [50, -10, 25])
def test_builtin_rules_keep_the_band_inclusive(value: float) -> None:
    for rule_id in ("temperature_high", "temperature_low"):
        assert Device(BUILTIN[rule_id]).send(value) == []


def test_builtin_message_is_the_seeds() -> None:
    device = Device(BUILTIN["temperature_high"])
    device.send(55)
    assert (
        device.transitions[0].alert["message"] == "Temperature 55°C on dev-1 is above maximum 50°C"
    )


@pytest.mark.parametrize("name", ["temp", "temperature", "temperature_c"])
def test_every_temperature_name_is_watched(name: str) -> None:
    assert BUILTIN["temperature_high"].value_in({name: 61.0, "cpu": 1.0}) == (name, 61.0)


# --- properties ---------------------------------------------------------------------------


@given(
    st.sampled_from(sorted(OPERATORS)),
    st.integers(1, 5),
    st.integers(0, 4),
    st.lists(st.sampled_from([28.0, 30.0, 32.0]), max_size=60),
)
def test_transitions_alternate_and_fire_only_with_k_breaches_in_the_window(
    operator: str, k: int, extra: int, values: list[float]
) -> None:
    r = rule(operator=operator, k=k, n=k + extra)
    device = Device(r)
    check = OPERATORS[operator]
    for i, value in enumerate(values):
        kinds = device.send(value)
        window = values[max(0, i + 1 - r.n) : i + 1]
        breaches = sum(check(v, r.threshold) for v in window)
        if kinds == ["fired"]:
            assert breaches >= k
        if kinds == ["resolved"]:
            assert breaches < k
        # Active exactly while k of the last n breach (no hysteresis, for or cooldown).
        assert device.active == (breaches >= k)
    kinds = [t.kind for t in device.transitions]
    assert kinds == ["fired", "resolved"] * (len(kinds) // 2) + ["fired"] * (len(kinds) % 2)


@given(st.lists(st.floats(-50, 50, allow_nan=False), max_size=60))
def test_hysteresis_never_resolves_above_the_clear_threshold(values: list[float]) -> None:
    device = Device(rule(threshold=10.0, clear_threshold=0.0))
    for value in values:
        kinds = device.send(value)
        if kinds == ["resolved"]:
            assert value <= 0.0
        if kinds == ["fired"]:
            assert value > 10.0


# --- rate-of-change and anomaly rules -----------------------------------------------


def anomaly(**fields: Any) -> Rule:
    return rule(kind="anomaly", operator=None, threshold=None, **fields)


def normal_traffic(
    rng: random.Random, count: int, low: float = 18.0, high: float = 26.0
) -> list[float]:
    """What the load generator sends: a value uniform in the metric's band."""
    return [round(rng.uniform(low, high), 3) for _ in range(count)]


def test_an_anomaly_fires_on_a_spike_unusual_for_the_device_and_resolves_when_back() -> None:
    device = Device(anomaly(deviations=4, warmup=30))
    rng = random.Random(7)
    assert device.send(*normal_traffic(rng, 200)) == []
    usual, spread = device.state.baseline[1], device.state.baseline[2] ** 0.5
    # Six of the band's own standard deviations above its middle: unusual for this device.
    band_sigma = 8.0 / 12**0.5
    assert device.send(22.0 + 6 * band_sigma) == ["fired"]
    alert = device.transitions[-1].alert
    assert alert["alert_type"] == "t_anomaly" and alert["threshold"] == 4
    assert "standard deviations from its usual" in alert["message"]
    assert abs(usual - 22.0) < 1.0 and abs(spread - band_sigma) < 0.5
    # Back within half the deviations (the default hysteresis): resolved.
    assert device.send(22.0) == ["resolved"]


def test_an_anomaly_rule_stays_quiet_on_normal_traffic_and_during_its_warmup() -> None:
    rng = random.Random(11)
    for _ in range(50):
        device = Device(anomaly())
        assert device.send(*normal_traffic(rng, 300)) == []
    # A value far off before the baseline is warm decides nothing: it is learned.
    cold = Device(anomaly(warmup=30))
    assert cold.send(20.0, 21.0, 500.0) == []


def test_a_device_is_judged_by_its_own_baseline() -> None:
    rng = random.Random(3)
    cool, warm = Device(anomaly()), Device(anomaly())
    cool.send(*normal_traffic(rng, 100, 10.0, 12.0))
    warm.send(*normal_traffic(rng, 100, 40.0, 42.0))
    # 41 is normal for the warm device and far off for the cool one.
    assert warm.send(41.0) == []
    assert cool.send(41.0) == ["fired"]


def test_the_baseline_survives_the_state_document() -> None:
    device = Device(anomaly())
    device.send(*normal_traffic(random.Random(5), 60))
    restored = RuleState.from_fields(device.state.to_fields())
    assert restored.baseline == device.state.baseline


def test_a_rate_rule_fires_on_a_fast_change_over_its_window() -> None:
    # Falling faster than 2 units a second, judged over a minute of readings 10 s apart.
    device = Device(rule(kind="rate", operator="<", threshold=-2.0, window="1m"), step_s=10)
    assert device.send(100, 99) == []  # -0.1/s
    assert device.send(40) == ["fired"]  # from 100 to 40 in 20 s: -3/s
    alert = device.transitions[-1].alert
    assert alert["alert_type"] == "t_rate_low" and "/s" in alert["message"]


def test_a_rate_rule_resolves_once_the_change_over_the_window_slows() -> None:
    device = Device(rule(kind="rate", operator=">", threshold=1.0, window="30s"), step_s=10)
    assert device.send(0, 1, 2) == []  # 0.1/s
    assert device.send(50) == ["fired"]
    # Steady again: once the jump leaves the 30 s window the rate is 0.
    kinds = device.send(50, 50, 50, 50)
    assert kinds == ["resolved"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "threshold"}, "operator"),
        ({"kind": "rate", "operator": ">"}, "threshold"),
        ({"kind": "anomaly", "operator": ">", "threshold": 1.0}, "operator"),
        ({"kind": "rate", "operator": ">", "threshold": 1.0, "window": "0s"}, "window"),
        ({"kind": "anomaly", "deviations": 3, "clear_deviations": 4}, "clear_deviations"),
        ({"kind": "absent"}, "for"),
        ({"kind": "absent", "for": "1m", "operator": ">"}, "operator"),
        ({"kind": "threshold", "metric": None, "operator": ">", "threshold": 1.0}, "metric"),
    ],
)
def test_what_each_kind_needs_is_checked_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    created = RuleCreate.model_validate({"name": "r", "metric": "t", **fields})
    with pytest.raises(RuleError) as refused:
        check_rule(created.model_dump(by_alias=True))
    assert refused.value.field == field


def test_an_absent_rule_needs_no_metric_and_names_what_it_raises() -> None:
    created = RuleCreate.model_validate({"name": "Offline", "kind": "absent", "for": "5m"})
    check_rule(created.model_dump(by_alias=True))
    assert rule(kind="absent", metric=None, operator=None, threshold=None).alert_type_of("*") == (
        "device_offline"
    )
    assert rule(kind="absent", operator=None, threshold=None).alert_type_of("t") == "t_absent"
