"""When a silence fires an absent rule, and the alert it raises: pure, without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alerts_worker.absence import ANY_READING, Presence, absent_alert, due
from alerts_worker.rules import resolved_transition
from telemetry_common.domain.alert_rules import Rule
from telemetry_common.infra.kafka.progress import ConsumerProgress

T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)


def absent(**fields: Any) -> Rule:
    doc = {"_id": "r-off", "name": "Offline", "kind": "absent", "for": "5m"}
    return Rule.model_validate({**doc, **fields})


def presence(**seen: datetime) -> Presence:
    return Presence("default", "dev-1", 0, first_seen=T0, seen=dict(seen), tags=["room:1"])


def test_a_device_is_due_once_silent_for_the_rules_duration() -> None:
    rule = absent()
    heard = presence(**{ANY_READING: T0 + timedelta(minutes=1)})
    assert due(heard, [rule], T0 + timedelta(minutes=5, seconds=59)) == []
    assert due(heard, [rule], T0 + timedelta(minutes=6)) == [(rule, T0 + timedelta(minutes=1))]


def test_a_metric_rule_counts_from_the_metrics_last_value_not_the_last_reading() -> None:
    rule = absent(metric="battery")
    heard = presence(**{ANY_READING: T0 + timedelta(minutes=9), "battery": T0})
    assert due(heard, [rule], T0 + timedelta(minutes=9)) == [(rule, T0)]
    # Never sent: counted from the device's first reading.
    assert due(presence(), [absent(metric="humidity")], T0 + timedelta(minutes=5)) != []


def test_a_silence_counts_from_the_rules_creation_when_that_is_later() -> None:
    created = T0 + timedelta(hours=1)
    rule = absent(created_at=created)
    heard = presence(**{ANY_READING: T0})
    assert due(heard, [rule], created + timedelta(minutes=4)) == []
    assert due(heard, [rule], created + timedelta(minutes=5)) == [(rule, created)]


def test_an_open_alert_or_a_device_outside_the_scope_is_not_due() -> None:
    heard = presence(**{ANY_READING: T0})
    later = T0 + timedelta(hours=1)
    assert due(heard, [absent(scope="tag", tag="room:2")], later) == []
    assert due(heard, [absent(scope="devices", devices=["dev-2"])], later) == []
    rule = absent()
    heard.open[rule.rule_id] = absent_alert(rule, heard, T0, later)
    assert due(heard, [rule], later) == []


def test_the_same_silence_names_the_same_alert_whenever_it_is_judged() -> None:
    rule = absent()
    heard = presence(**{ANY_READING: T0})
    first = absent_alert(rule, heard, T0, T0 + timedelta(minutes=5))
    again = absent_alert(rule, heard, T0, T0 + timedelta(minutes=7))
    assert first["alert_id"] == again["alert_id"]
    assert first["fired_at"] == T0 + timedelta(minutes=5) == again["fired_at"]
    assert first["alert_type"] == "device_offline"
    assert first["message"] == (
        "Offline: dev-1 has sent nothing since 2025-01-15T10:00:00.000Z (more than 5m)"
    )
    battery = absent_alert(absent(metric="battery"), heard, T0, T0 + timedelta(minutes=5))
    assert "dev-1 has sent no battery since" in battery["message"]
    next_silence = absent_alert(rule, heard, T0 + timedelta(hours=1), T0 + timedelta(hours=2))
    assert next_silence["alert_id"] != first["alert_id"]


def test_an_alert_fired_silenced_resolves_silently() -> None:
    rule = absent()
    alert = absent_alert(rule, presence(), T0, T0 + timedelta(minutes=5))
    later = T0 + timedelta(minutes=8)
    assert resolved_transition(alert, later, "reported", silenced=False).notify
    alert["silenced"] = True
    ended = resolved_transition(alert, later, "reported", silenced=False)
    assert not ended.notify
    assert (ended.alert["status"], ended.alert["resolved_reason"]) == ("resolved", "reported")


def test_a_partitions_clock_is_the_wall_clock_only_once_caught_up() -> None:
    progress = ConsumerProgress()
    now = T0 + timedelta(minutes=10)
    assert progress.clock(0, now) is None  # assigned, nothing known yet
    newest = T0 + timedelta(minutes=2)
    progress.handled(0, newest.timestamp() * 1000, next_offset=50, end=900)
    assert progress.clock(0, now) == newest  # behind: as far as it has read
    progress.handled(0, (T0 + timedelta(minutes=9)).timestamp() * 1000, 900, end=900)
    assert progress.clock(0, now) == now
    progress.forget([0])
    assert progress.clock(0, now) is None
    progress.idle(0, position=900, end=900)  # a fetch found nothing more
    assert progress.clock(0, now) == now
    progress.idle(1, position=3, end=None)  # never fetched: unknown
    assert progress.clock(1, now) is None
