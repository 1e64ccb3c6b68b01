"""Deterministic readings for the benchmarks."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from telemetry_common.domain.reading import Reading, parse_reading
from telemetry_common.domain.timefmt import iso_z

# Inside the default thresholds (temperature -10..50, humidity 0..100) unless
# an anomaly is asked for, so alert counts are what the run chose.
NORMAL = {"temperature_c": (15.0, 35.0), "humidity": (30.0, 70.0)}
BREACH = {"temperature_c": 80.0, "humidity": 120.0}


def bodies(
    count: int,
    devices: int,
    *,
    end: datetime,
    span: timedelta = timedelta(hours=24),
    anomaly_rate: float = 0.0,
    prefix: str = "bench-",
    seed: int = 1,
) -> Iterator[dict[str, Any]]:
    """``count`` readings round-robin over ``devices``, evenly spread over ``span`` before ``end``.

    Each carries ``ts``, so its event id is derived and a resend is a duplicate.
    """
    rng = random.Random(seed)
    per_device = math.ceil(count / devices)
    step = span / max(per_device, 1)
    start = end - span
    for i in range(count):
        device, round_ = i % devices, i // devices
        # Devices are offset within a step so they do not all share one instant.
        ts = start + step * round_ + step * (device / devices)
        anomalous = rng.random() < anomaly_rate
        body: dict[str, Any] = {"device_id": f"{prefix}{device}", "ts": iso_z(ts)}
        for name, (low, high) in NORMAL.items():
            body[name] = BREACH[name] if anomalous else round(rng.uniform(low, high), 2)
        yield body


def canonical(body: dict[str, Any], now: datetime | None = None) -> Reading:
    """The reading as the ingestion API publishes it."""
    return parse_reading(body, now=now or datetime.now(UTC), max_future_skew=None)
