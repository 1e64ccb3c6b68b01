"""Where a reading is evaluated: the threshold rules, pure and unit-tested without servers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from telemetry_common.reading import Reading

# How far past a threshold an alert turns critical, as a share of the threshold.
CRITICAL_MARGIN = 0.20


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """A sensor's allowed band; readings outside it raise ``<sensor>_low`` / ``<sensor>_high``."""

    sensor: str
    metrics: tuple[str, ...]
    minimum: float
    maximum: float
    unit: str = ""


def default_rules(
    temp_min: float, temp_max: float, humidity_min: float, humidity_max: float
) -> list[ThresholdRule]:
    """The seed's environment thresholds. Both reading forms name temperature differently
    (`temperature_c` flat, `temp` general), so each name maps to the same sensor."""
    return [
        ThresholdRule(
            "temperature", ("temperature_c", "temperature", "temp"), temp_min, temp_max, "°C"
        ),
        ThresholdRule("humidity", ("humidity",), humidity_min, humidity_max, "%"),
    ]


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    event_id: str
    device_id: str
    sensor_type: str
    metric: str
    value: float
    threshold: float
    alert_type: str
    severity: str
    message: str
    timestamp: datetime


def critical_margin(threshold: float, rule: ThresholdRule) -> float:
    """20% of the threshold; for a threshold of 0 (humidity's floor), 20% of the band."""
    base = abs(threshold) if threshold else rule.maximum - rule.minimum
    return CRITICAL_MARGIN * abs(base)


def evaluate(reading: Reading, rules: list[ThresholdRule]) -> list[Alert]:
    alerts: list[Alert] = []
    for rule in rules:
        for metric in rule.metrics:
            value = reading.metrics.get(metric)
            if value is None:
                continue
            if value > rule.maximum:
                direction, threshold = "high", rule.maximum
                past = value - threshold
            elif value < rule.minimum:
                direction, threshold = "low", rule.minimum
                past = threshold - value
            else:
                continue
            severity = "critical" if past > critical_margin(threshold, rule) else "warning"
            alert_type = f"{rule.sensor}_{direction}"
            relation = "above maximum" if direction == "high" else "below minimum"
            alerts.append(
                Alert(
                    # One alert per reading and rule: a replay or a device retry of
                    # the same reading maps to the same document.
                    alert_id=f"{reading.event_id}:{alert_type}",
                    event_id=reading.event_id,
                    device_id=reading.device_id,
                    sensor_type=rule.sensor,
                    metric=metric,
                    value=value,
                    threshold=threshold,
                    alert_type=alert_type,
                    severity=severity,
                    message=(
                        f"{rule.sensor.capitalize()} {value:g}{rule.unit} on {reading.device_id} "
                        f"is {relation} {threshold:g}{rule.unit}"
                    ),
                    timestamp=reading.ts,
                )
            )
    return alerts
