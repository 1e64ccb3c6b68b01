"""What the alerts worker must decide: the same readings evaluated once, uninterrupted."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from alerts_worker.incidents import RuleIndex, evaluate_batch
from telemetry_common.domain.alert_rules import Rule, builtin_rules
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.kafka.consumer import Consumed


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
