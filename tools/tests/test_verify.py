"""The checks chaos runs and integration tests rely on: what counts as a broken incident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from telemetry_tools.verify import incident_violations, repeated_transitions

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def alert(alert_id: str, fired_s: int, resolved_s: int | None, rule: str = "r1") -> dict:
    return {
        "alert_id": alert_id,
        "rule_id": rule,
        "device_id": "d1",
        "fired_at": T0 + timedelta(seconds=fired_s),
        "resolved_at": None if resolved_s is None else T0 + timedelta(seconds=resolved_s),
    }


def test_incidents_one_after_another_are_fine() -> None:
    assert incident_violations([alert("b", 20, None), alert("a", 0, 10)]) == []


def test_incidents_fired_and_resolved_at_one_instant_are_fine() -> None:
    # Readings sharing a timestamp: one fires and the next resolves, then a third fires.
    assert incident_violations([alert("b", 0, None), alert("a", 0, 0)]) == []


def test_two_alerts_open_from_one_instant_are_a_violation() -> None:
    assert len(incident_violations([alert("b", 0, None), alert("a", 0, 5)])) == 1


def test_two_rules_may_be_open_on_one_device() -> None:
    assert incident_violations([alert("a", 0, None), alert("b", 5, None, rule="r2")]) == []


def test_a_second_alert_while_one_is_open_is_a_violation() -> None:
    assert incident_violations([alert("a", 0, None), alert("b", 5, None)]) == [
        "rule r1 on d1: b fired while a was open"
    ]


def test_a_second_alert_before_the_first_resolved_is_a_violation() -> None:
    assert len(incident_violations([alert("a", 0, 30), alert("b", 5, None)])) == 1


def test_a_transition_sent_twice_is_reported() -> None:
    messages = [{"notification_id": "a:fired"}, {"notification_id": "a:fired"}]
    messages.append({"notification_id": "a:resolved"})
    assert repeated_transitions(messages) == ["a:fired sent 2 times"]
