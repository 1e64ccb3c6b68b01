"""What the alerts worker must decide: the same readings evaluated once, uninterrupted."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts_worker.incidents import RuleIndex, evaluate_batch
from integration.readings import BASE_TS, reading
from telemetry_common.domain.alert_rules import Rule, RuleCreate, builtin_rules
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.kafka.consumer import Consumed

DEVICES = 30
READINGS_PER_DEVICE = 80
# A person's rule beside the built-in ones: k-of-n, hysteresis and a cooldown.
DAMP = RuleCreate.model_validate(
    {
        "name": "Damp",
        "metric": "humidity",
        "operator": ">",
        "threshold": 80,
        "k": 2,
        "n": 3,
        "clear_threshold": 70,
        "cooldown": "1m",
    }
).model_dump(by_alias=True) | {"_id": "damp"}
# Rules that learn from every reading; their state is written at checkpoints only.
LEARNING = [
    RuleCreate.model_validate(rule).model_dump(by_alias=True) | {"_id": f"learns-{i}"}
    for i, rule in enumerate((
        # Loose enough to fire often on these readings: every firing hangs on the
        # exact baseline learned from all the readings before it.
        {"name": "Odd heat", "kind": "anomaly", "metric": "temperature_c", "deviations": 1.5,
         "warmup": 5},
        {"name": "Swings", "kind": "rate", "metric": "humidity", "operator": ">",
         "threshold": 0.5, "window": "20s"},
    ))
]  # fmt: skip


def incidents(seed: int) -> list[Reading]:
    """Each device's readings in order (devices interleaved): runs of breaches and calm."""
    rnd = random.Random(seed)
    out: list[Reading] = []
    for i in range(READINGS_PER_DEVICE):
        for d in range(DEVICES):
            hot = (i // rnd.choice((3, 5, 8))) % 2 == 1
            out.append(
                reading(
                    {
                        "event_id": f"k{seed}-{d}-{i}",
                        "device_id": f"inc-{d}",
                        "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
                        "temperature_c": rnd.uniform(51, 70) if hot else rnd.uniform(20, 49),
                        "humidity": rnd.uniform(60, 95),
                    }
                )
            )
    return out


def expected_notifications(
    readings: Iterable[Reading], extra_rules: Iterable[dict[str, Any]] = ()
) -> list[str]:
    """Notification ids of one evaluation of each reading's first copy, in arrival order,
    with the built-in rules at their default thresholds and ``extra_rules``."""
    rules = [Rule.model_validate(doc) for doc in [*builtin_rules(-10, 50, 0, 100), *extra_rules]]
    first: dict[str, Reading] = {}
    for r in readings:
        first.setdefault(r.event_id, r)
    items = [Consumed(0, offset, r, None) for offset, r in enumerate(first.values())]  # type: ignore[arg-type]
    outcome = evaluate_batch(items, RuleIndex(rules), {}, [], datetime.now(UTC))
    return [raised.transition.notification_id for raised in outcome.raised]


def alert_ids(notifications: Iterable[str], transition: str) -> set[str]:
    suffix = f":{transition}"
    return {n.removesuffix(suffix) for n in notifications if n.endswith(suffix)}
