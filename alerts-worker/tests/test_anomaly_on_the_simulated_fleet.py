"""The default anomaly rule on the load generator's traffic: quiet on ten minutes of a
thousand devices' normal readings, and firing on every spike of six deviations, on the
spike's own reading."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from alerts_worker.rules import MetricValue, RuleState, evaluate
from telemetry_common.domain.alert_rules import Rule, RuleCreate
from telemetry_tools.loadgen import DEFAULT_METRICS, make_reading, spike_value

DEVICES = 1000
READINGS = 600  # ten minutes at the load generator's one reading a second
METRIC = "temperature_c"
T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)


def default_anomaly_rule() -> Rule:
    created = RuleCreate.model_validate({"name": "Unusual", "metric": METRIC, "kind": "anomaly"})
    return Rule.model_validate({"_id": "r-anomaly", **created.model_dump(by_alias=True)})


def test_the_default_anomaly_rule_is_quiet_on_normal_traffic_and_fires_on_each_spike() -> None:
    rule = default_anomaly_rule()
    rng = random.Random(2026)
    low, high = DEFAULT_METRICS[METRIC]
    false_alarms, missed, fired_late = 0, 0, 0
    for d in range(DEVICES):
        device = f"sim-{d}"
        state = RuleState()
        # Each device spikes once, after its baseline is warm: where, and how far.
        spike_at = rng.randrange(rule.warmup + 30, READINGS)
        for i in range(READINGS):
            body = make_reading(device, rng, DEFAULT_METRICS, anomaly_rate=0.0)
            value = body[METRIC]
            if i == spike_at:
                value = spike_value(low, high, 6.0, rng)
            seen = MetricValue(body["event_id"], device, METRIC, value, T0 + timedelta(seconds=i))
            transition = evaluate(rule, state, seen, T0)
            fired = transition is not None and transition.kind == "fired"
            if i == spike_at and not fired:
                missed += 1
            elif fired and i != spike_at:
                if i < spike_at:
                    false_alarms += 1
                else:
                    fired_late += 1
    assert (false_alarms, missed, fired_late) == (0, 0, 0)
