"""Unit tests for alerts_worker.incidents: scopes, replays and rules that change."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alerts_worker.incidents import RuleDeviceState, RuleIndex, evaluate_batch
from hypothesis import given, settings
from hypothesis import strategies as st
from telemetry_common.domain.alert_rules import Rule, Silence
from telemetry_common.domain.reading import Reading, parse_reading
from telemetry_common.infra.kafka.consumer import Consumed

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)


def rule(rule_id: str = "r-1", **fields: Any) -> Rule:
    doc = {"_id": rule_id, "name": "Hot", "metric": "t", "operator": ">", "threshold": 30.0}
    return Rule.model_validate({**doc, **fields})


class Partition:
    """Readings as one Kafka partition delivers them, offsets counting up."""

    def __init__(self) -> None:
        self.offset = 0

    def items(self, *bodies: dict[str, Any]) -> list[Consumed[Reading]]:
        out = []
        for body in bodies:
            doc = {"device_id": "dev-1", "ts": f"2025-01-15T10:00:{self.offset:02d}Z", **body}
            reading = parse_reading(doc, now=NOW, max_future_skew=timedelta(days=1))
            out.append(Consumed(0, self.offset, reading, None))  # type: ignore[arg-type]
            self.offset += 1
        return out


def fired_devices(items: list[Consumed[Reading]], *rules: Rule) -> list[tuple[str, str]]:
    outcome = evaluate_batch(items, RuleIndex(rules), {}, [], NOW)
    return [(r.transition.alert["device_id"], r.transition.kind) for r in outcome.raised]


def test_scope_all_devices_tag_and_device_list() -> None:
    p = Partition()
    items = p.items(
        {"device_id": "a", "t": 40},
        {"device_id": "b", "metrics": {"t": 40}, "tags": ["room:101"]},
        {"device_id": "c", "t": 40},
    )
    assert fired_devices(items, rule()) == [("a", "fired"), ("b", "fired"), ("c", "fired")]
    assert fired_devices(items, rule(scope="tag", tag="room:101")) == [("b", "fired")]
    assert fired_devices(items, rule(scope="devices", devices=["a", "c"])) == [
        ("a", "fired"),
        ("c", "fired"),
    ]


def test_disabled_rules_and_other_metrics_are_not_evaluated() -> None:
    items = Partition().items({"t": 40, "humidity": 99})
    assert fired_devices(items, rule(enabled=False)) == []
    assert fired_devices(items, rule(metric="pressure")) == []
    outcome = evaluate_batch(items, RuleIndex([rule(), rule("r-2")]), {}, [], NOW)
    assert outcome.evaluations == 2


def test_a_replayed_reading_is_skipped_by_the_state_that_took_it() -> None:
    p = Partition()
    items = p.items({"t": 40})
    tracked: dict[str, RuleDeviceState] = {}
    index = RuleIndex([rule()])
    first = evaluate_batch(items, index, tracked, [], NOW)
    assert [r.transition.kind for r in first.raised] == ["fired"]
    # The same records again (a crash before the commit): nothing new.
    again = evaluate_batch(items, index, tracked, [], NOW)
    assert again.raised == [] and again.evaluations == 0
    # Stored and read back, as after a restart: still nothing new.
    restored = {k: RuleDeviceState.from_document(t.to_document(1, NOW)) for k, t in tracked.items()}
    assert evaluate_batch(items, index, restored, [], NOW).raised == []
    assert [
        r.transition.kind
        for r in evaluate_batch(p.items({"t": 0}), index, restored, [], NOW).raised
    ] == ["resolved"]


def test_an_open_alert_of_a_removed_rule_resolves_with_the_next_reading() -> None:
    p = Partition()
    tracked: dict[str, RuleDeviceState] = {}
    evaluate_batch(p.items({"t": 40}), RuleIndex([rule()]), tracked, [], NOW)
    outcome = evaluate_batch(p.items({"humidity": 1}), RuleIndex([]), tracked, [], NOW)
    [raised] = outcome.raised
    assert raised.transition.kind == "resolved"
    assert raised.transition.alert["resolved_reason"] == "rule_changed"


def test_a_reading_without_the_metric_leaves_the_alert_open() -> None:
    p = Partition()
    tracked: dict[str, RuleDeviceState] = {}
    index = RuleIndex([rule()])
    evaluate_batch(p.items({"t": 40}), index, tracked, [], NOW)
    assert evaluate_batch(p.items({"humidity": 1}), index, tracked, [], NOW).raised == []


def test_a_silence_of_the_rule_or_the_device_mutes_the_transition() -> None:
    until = NOW + timedelta(hours=1)
    for silence in (
        Silence(_id="s", rule_id="r-1", until=until),
        Silence(_id="s", device_id="dev-1", until=until),
        Silence(_id="s", rule_id="r-1", device_id="dev-1", until=until),
    ):
        [raised] = evaluate_batch(
            Partition().items({"t": 40}), RuleIndex([rule()]), {}, [silence], NOW
        ).raised
        assert not raised.transition.notify
    others = [
        Silence(_id="s", rule_id="r-2", until=until),
        Silence(_id="s", device_id="dev-2", until=until),
        Silence(_id="s", rule_id="r-1", until=NOW),  # over
    ]
    [raised] = evaluate_batch(
        Partition().items({"t": 40}), RuleIndex([rule()]), {}, others, NOW
    ).raised
    assert raised.transition.notify


def test_states_that_decide_nothing_are_not_kept() -> None:
    p = Partition()
    index = RuleIndex([rule(k=2, n=3, clear_threshold=25.0, cooldown="1m")])
    tracked: dict[str, RuleDeviceState] = {}
    outcome = evaluate_batch(p.items({"t": 10}, {"t": 20}), index, tracked, [], NOW)
    assert (outcome.evaluations, tracked) == (2, {})  # nothing past 25 or 30: nothing kept
    evaluate_batch(p.items({"t": 27}), index, tracked, [], NOW)
    assert [t.idle for t in tracked.values()] == [False]  # 27 would hold an open alert
    # Fired, then resolved: the cooldown keeps the state until it has run out.
    later = p.items({"t": 31}, {"t": 31}, {"t": 0}, {"t": 0}, {"t": 0})
    kinds = [r.transition.kind for r in evaluate_batch(later, index, tracked, [], NOW).raised]
    assert kinds == ["fired", "resolved"]
    assert [t.idle for t in tracked.values()] == [False]


class EveryRuleJudges(RuleIndex):
    """The index without its shortcut for readings that concern no rule."""

    def quiet_count(self, reading: Reading) -> int | None:
        return None


RULE_SHAPES = st.fixed_dictionaries(
    {
        "metric": st.sampled_from(["t", "humidity"]),
        "operator": st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
        "threshold": st.sampled_from([10.0, 20.0, 30.0]),
        "clear_threshold": st.sampled_from([None, 15.0, 25.0]),
        "k": st.integers(1, 2),
        "n": st.just(2),
        "scope": st.sampled_from(["all", "all", "devices"]),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    shapes=st.lists(RULE_SHAPES, min_size=1, max_size=5),
    values=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.sampled_from([0.0, 10.0, 15.0, 20.0, 30.0, 40.0])
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_readings_that_concern_no_rule_are_decided_as_if_each_rule_judged_them(
    shapes: list[dict[str, Any]], values: list[tuple[str, float]]
) -> None:
    rules = [
        rule(f"r-{i}", **shape, **({"devices": ["a"]} if shape["scope"] == "devices" else {}))
        for i, shape in enumerate(shapes)
    ]
    items = Partition().items(*({"device_id": d, "t": v, "humidity": v} for d, v in values))
    fast_states: dict[str, RuleDeviceState] = {}
    judged_states: dict[str, RuleDeviceState] = {}
    fast = evaluate_batch(items, RuleIndex(rules), fast_states, [], NOW)
    judged = evaluate_batch(items, EveryRuleJudges(rules), judged_states, [], NOW)
    assert {i: t.to_document(1, NOW) for i, t in fast_states.items()} == {
        i: t.to_document(1, NOW) for i, t in judged_states.items()
    }
    assert fast.evaluations == judged.evaluations
    assert [r.transition.notification_id for r in fast.raised] == [
        r.transition.notification_id for r in judged.raised
    ]


@pytest.mark.parametrize(
    ("operator", "threshold", "clear", "past"),
    [
        (">", 30.0, None, 30.5),
        (">=", 30.0, None, 30.0),
        ("<", 10.0, None, 9.5),
        ("<=", 10.0, None, 10.0),
        (">", 30.0, 25.0, 25.5),
        ("<", 10.0, 15.0, 14.5),
    ],
)
def test_a_value_just_past_a_limit_meets_its_rule(
    operator: str, threshold: float, clear: float | None, past: float
) -> None:
    # The rule on the other metric keeps that metric's band in play too.
    rules = [
        rule(operator=operator, threshold=threshold, clear_threshold=clear),
        rule("r-2", metric="humidity", threshold=90.0),
    ]
    # First a device that only ever sends values its rules leave idle, then one past.
    items = Partition().items({"t": 20.0, "humidity": 50.0}, {"t": past, "humidity": 50.0})
    fast_states: dict[str, RuleDeviceState] = {}
    judged_states: dict[str, RuleDeviceState] = {}
    fast = evaluate_batch(items, RuleIndex(rules), fast_states, [], NOW)
    judged = evaluate_batch(items, EveryRuleJudges(rules), judged_states, [], NOW)
    assert judged_states, "the value past the limit should have met its rule"
    assert fast_states.keys() == judged_states.keys()
    assert [r.transition.notification_id for r in fast.raised] == [
        r.transition.notification_id for r in judged.raised
    ]
    assert fast.evaluations == judged.evaluations == 4


def test_a_late_reading_after_its_incident_closed_opens_no_alert_in_the_past() -> None:
    # A device's hot reading at :02 reaches Kafka after its newer ones (its POST was
    # retried while the API was down): the incident at :00 had fired, resolved, and
    # its state gone idle and let go by then.
    p = Partition()
    index = RuleIndex([rule()])
    clocks: dict[str, datetime] = {}
    tracked: dict[str, RuleDeviceState] = {}
    first = evaluate_batch(p.items({"t": 40}, {"t": 20}), index, tracked, [], NOW, clocks)
    assert [r.transition.kind for r in first.raised] == ["fired", "resolved"]
    calm = p.items(*({"t": 20} for _ in range(20)))
    evaluate_batch(calm, index, tracked, [], NOW, clocks)
    assert all(t.state.is_idle(index.by_id[t.rule_id]) for t in tracked.values())
    tracked.clear()  # let go, as the worker does with idle states
    late = parse_reading(
        {"device_id": "dev-1", "ts": "2025-01-15T10:00:02Z", "t": 45},
        now=NOW,
        max_future_skew=timedelta(days=1),
    )
    again = evaluate_batch([Consumed(0, 99, late, None)], index, tracked, [], NOW, clocks)  # type: ignore[arg-type]
    [raised] = again.raised
    newest = calm[-1].value.ts
    assert raised.transition.alert["fired_at"] == newest
    resolved_at = first.raised[1].transition.alert["resolved_at"]
    assert raised.transition.alert["fired_at"] >= resolved_at


def in_project(project_id: str, items: list[Consumed[Reading]]) -> list[Consumed[Reading]]:
    return [
        Consumed(i.partition, i.offset, replace(i.value, project_id=project_id), i.record)
        for i in items
    ]


def test_a_rule_judges_its_own_projects_readings_only() -> None:
    p = Partition()
    # dev-1 of two projects, both hot: only the rule's project fires, named as such.
    items = in_project("prj-a", p.items({"t": 40})) + p.items({"t": 40})
    outcome = evaluate_batch(items, RuleIndex([rule(project_id="prj-a")]), {}, [], NOW)
    [raised] = outcome.raised
    assert raised.transition.alert["project_id"] == "prj-a"
    assert raised.transition.alert["event_id"] == items[0].value.event_id
    # The default project's rules (the built-in ones among them) leave other projects alone.
    assert fired_devices(in_project("prj-a", p.items({"t": 40})), rule()) == []


def test_a_device_id_in_two_projects_is_two_devices() -> None:
    p = Partition()
    index = RuleIndex([rule("r-a", project_id="prj-a", clear_threshold=25), rule("r-b")])
    tracked: dict[str, RuleDeviceState] = {}
    hot = in_project("prj-a", p.items({"t": 40})) + p.items({"t": 40})
    assert len(evaluate_batch(hot, index, tracked, [], NOW).raised) == 2
    assert {(t.project_id, t.rule_id) for t in tracked.values()} == {
        ("prj-a", "r-a"),
        ("default", "r-b"),
    }
    # A cool reading of the default project's dev-1 resolves its own alert only.
    cool = p.items({"t": 20})
    [resolved] = evaluate_batch(cool, index, tracked, [], NOW).raised
    assert (resolved.transition.kind, resolved.transition.alert["rule_id"]) == ("resolved", "r-b")
    # Stored and read back, a state keeps its project.
    restored = [RuleDeviceState.from_document(t.to_document(1, NOW)) for t in tracked.values()]
    assert {t.device_key for t in restored} == {"prj-a|dev-1", "dev-1"}


def test_a_silence_holds_in_its_own_project_only() -> None:
    p = Partition()
    silence = Silence.model_validate(
        {"_id": "s-1", "project_id": "prj-a", "device_id": "dev-1", "until": NOW + timedelta(1)}
    )
    index = RuleIndex([rule("r-a", project_id="prj-a"), rule("r-b")])
    items = in_project("prj-a", p.items({"t": 40})) + p.items({"t": 40})
    raised = evaluate_batch(items, index, {}, [silence], NOW).raised
    assert {r.transition.alert["rule_id"]: r.transition.notify for r in raised} == {
        "r-a": False,
        "r-b": True,
    }
