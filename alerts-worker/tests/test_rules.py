"""Unit tests for alerts_worker.rules: thresholds, severities and deterministic alert ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alerts_worker.rules import default_rules, evaluate
from telemetry_common.reading import Reading, parse_reading

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)
RULES = default_rules(-10, 50, 0, 100)


def reading(**body: Any) -> Reading:
    doc = {"device_id": "dev-1", "ts": "2025-01-15T10:00:00Z", **body}
    return parse_reading(doc, now=NOW, max_future_skew=timedelta(days=1))


@pytest.mark.parametrize(
    ("metric", "value", "expected"),
    [
        ("temperature_c", 25, None),
        ("temperature_c", 50, None),
        ("temperature_c", -10, None),
        ("temperature_c", 50.01, ("temperature_high", "warning", 50)),
        ("temperature_c", 55, ("temperature_high", "warning", 50)),
        ("temperature_c", 60, ("temperature_high", "warning", 50)),
        ("temperature_c", 61, ("temperature_high", "critical", 50)),
        ("temperature_c", -11, ("temperature_low", "warning", -10)),
        ("temperature_c", -12, ("temperature_low", "warning", -10)),
        ("temperature_c", -13, ("temperature_low", "critical", -10)),
        ("humidity", 0, None),
        ("humidity", 100, None),
        ("humidity", 101, ("humidity_high", "warning", 100)),
        ("humidity", 120, ("humidity_high", "warning", 100)),
        ("humidity", 125, ("humidity_high", "critical", 100)),
        ("humidity", -1, ("humidity_low", "warning", 0)),
        ("humidity", -20, ("humidity_low", "warning", 0)),
        ("humidity", -25, ("humidity_low", "critical", 0)),
    ],
)
def test_threshold_and_severity(
    metric: str, value: float, expected: tuple[str, str, float] | None
) -> None:
    alerts = evaluate(reading(**{metric: value}), RULES)
    if expected is None:
        assert alerts == []
        return
    alert_type, severity, threshold = expected
    [alert] = alerts
    assert (alert.alert_type, alert.severity, alert.threshold) == (alert_type, severity, threshold)
    assert alert.metric == metric
    assert alert.value == value
    assert alert.sensor_type == alert_type.split("_")[0]


@pytest.mark.parametrize("name", ["temp", "temperature", "temperature_c"])
def test_every_temperature_name_maps_to_the_temperature_rule(name: str) -> None:
    [alert] = evaluate(reading(metrics={name: 61.0}), RULES)
    assert (alert.alert_type, alert.severity, alert.metric) == (
        "temperature_high",
        "critical",
        name,
    )


def test_general_form_reading_alerts_with_its_event_id() -> None:
    r = reading(event_id="e001", metrics={"temp": 55.0, "cpu": 0.44}, tags=["room:101"])
    [alert] = evaluate(r, RULES)
    assert alert.alert_id == "e001:temperature_high"
    assert alert.event_id == "e001"
    assert alert.device_id == "dev-1"
    assert alert.timestamp == datetime(2025, 1, 15, 10, tzinfo=UTC)


@pytest.mark.parametrize("value", [-1e9, -11.0, 0.0, 55.0, 101.0, 1e9])
def test_unrelated_metric_never_alerts(value: float) -> None:
    assert evaluate(reading(cpu=value, voltage=value), RULES) == []


def test_alert_id_is_deterministic_for_a_retried_reading() -> None:
    body = {"temperature_c": 55.0, "humidity": 125.0}
    first = evaluate(reading(**body), RULES)
    retry = evaluate(reading(**body), RULES)
    assert [a.alert_id for a in first] == [a.alert_id for a in retry]
    event_id = reading(**body).event_id
    assert sorted(a.alert_id for a in first) == [
        f"{event_id}:humidity_high",
        f"{event_id}:temperature_high",
    ]


def test_one_reading_can_raise_one_alert_per_rule() -> None:
    alerts = evaluate(reading(temperature_c=-13.0, humidity=101.0), RULES)
    assert {(a.alert_type, a.severity) for a in alerts} == {
        ("temperature_low", "critical"),
        ("humidity_high", "warning"),
    }
    assert len({a.alert_id for a in alerts}) == 2


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"temperature_c": 55.0}, ("dev-1", "55", "above", "50")),
        ({"temperature_c": -13.5}, ("dev-1", "-13.5", "below", "-10")),
        ({"humidity": 101.0}, ("dev-1", "101", "above", "100")),
        ({"device_id": "sensor-9", "humidity": -1.0}, ("sensor-9", "-1", "below", "0")),
    ],
)
def test_message_names_device_value_and_threshold(
    body: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    [alert] = evaluate(reading(**body), RULES)
    for fragment in fragments:
        assert fragment in alert.message
    assert alert.message[0].isupper()


def test_message_is_readable() -> None:
    [alert] = evaluate(reading(temperature_c=55.0), RULES)
    assert alert.message == "Temperature 55°C on dev-1 is above maximum 50°C"


def test_custom_thresholds_are_used() -> None:
    rules = default_rules(0, 30, 20, 80)
    assert evaluate(reading(temperature_c=25.0, humidity=50.0), rules) == []
    # Threshold 0: the critical margin is 20% of the 0..30 band, i.e. 6 degrees.
    [warm] = evaluate(reading(temperature_c=-5.0), rules)
    [cold] = evaluate(reading(temperature_c=-7.0), rules)
    assert (warm.severity, cold.severity) == ("warning", "critical")
    # Threshold 20: the margin is 20% of the threshold itself, i.e. 4 points.
    [dry] = evaluate(reading(humidity=17.0), rules)
    [drier] = evaluate(reading(humidity=15.0), rules)
    assert (dry.alert_type, dry.severity, dry.threshold) == ("humidity_low", "warning", 20)
    assert drier.severity == "critical"


def test_no_rules_no_alerts() -> None:
    assert evaluate(reading(temperature_c=1000.0), []) == []
