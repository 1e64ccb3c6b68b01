"""The alerts worker's held (rule, device) states on the real MongoDB wire server:
bounded memory, a restarted owner, and an owner that lost its partition."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.structs import ConsumerRecord
from alerts_worker.absence import Absences
from alerts_worker.incidents import RuleIndex, evaluate_batch
from alerts_worker.store import (
    ALERT_OUTBOX,
    ALERT_STATE,
    HeldStates,
    device_key,
    ensure_alert_indexes,
    record_transitions,
)
from alerts_worker.worker import evaluate_and_record
from integration import alerts_reference as reference
from integration.alerts_reference import alert_ids, expected_notifications
from integration.readings import BASE_TS, reading
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.alert_rules import Rule, builtin_rules
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.kafka.consumer import Consumed
from telemetry_common.infra.kafka.progress import ConsumerProgress
from telemetry_common.infra.mongo import ALERTS
from telemetry_common.infra.ownership import PartitionOwnership

pytestmark = pytest.mark.integration

RULES = RuleIndex([Rule.model_validate(doc) for doc in builtin_rules(-10, 50, 0, 100)])


def incidents(devices: int, per_device: int, seed: int) -> list[Reading]:
    """Devices interleaved, each running hot and calm in turns."""
    rnd = random.Random(seed)
    return [
        reading(
            {
                "event_id": f"s{seed}-{d}-{i}",
                "device_id": f"held-{d}",
                "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
                "temperature_c": rnd.uniform(51, 70) if (i // 4) % 2 else rnd.uniform(20, 49),
            }
        )
        for i in range(per_device)
        for d in range(devices)
    ]


def positioned(readings: list[Reading], partition: int = 0) -> list[Consumed[Reading]]:
    """The readings as the consume loop hands them over, received when they were taken."""
    return [
        Consumed(partition, offset, r, record(partition, offset, r))
        for offset, r in enumerate(readings)
    ]


def record(partition: int, offset: int, r: Reading) -> ConsumerRecord[bytes, bytes]:
    received_ms = int(r.ts.timestamp() * 1000)
    value = r.to_kafka_value()
    return ConsumerRecord(
        "telemetry.raw", partition, offset, received_ms, 0, None, value, None, 0, len(value), []
    )


async def owner(db: AsyncDatabase, name: str, device_limit: int = 10_000) -> HeldStates:
    """A worker that was just assigned partition 0."""
    ownership = PartitionOwnership(db, "alerts-worker", "test", "telemetry.raw", name)
    states = HeldStates(db, ownership, device_limit)
    await states.partitions_assigned({0})
    return states


async def run(
    db: AsyncDatabase,
    states: HeldStates,
    batch: list[Consumed[Reading]],
    rules: RuleIndex = RULES,
) -> set[int]:
    """One batch, then a checkpoint (as the worker runs with CHECKPOINT_INTERVAL_S=0)."""
    absences = Absences(db, states.owned, ConsumerProgress())
    _, _, lost = await evaluate_and_record(db, states, absences, batch, rules, [])
    return lost | await states.checkpoint(datetime.now(UTC))


async def stored_alerts(db: AsyncDatabase) -> dict[str, str]:
    return {doc["_id"]: doc["status"] async for doc in db[ALERTS].find({})}


def expected(readings: list[Reading]) -> dict[str, str]:
    notifications = expected_notifications(readings)
    resolved = alert_ids(notifications, "resolved")
    return {a: "resolved" if a in resolved else "active" for a in alert_ids(notifications, "fired")}


async def test_devices_let_go_under_the_limit_are_read_back_and_decide_the_same(
    db: AsyncDatabase,
) -> None:
    await ensure_alert_indexes(db)
    readings = incidents(devices=40, per_device=30, seed=1)
    states = await owner(db, "small", device_limit=10)
    batch = positioned(readings)
    for start in range(0, len(batch), 25):
        assert await run(db, states, batch[start : start + 25]) == set()
        assert len(states.devices) <= 10
    assert await stored_alerts(db) == expected(readings)
    assert len(expected(readings)) > 40


async def test_a_restarted_owner_continues_each_incident_from_the_store(
    db: AsyncDatabase,
) -> None:
    await ensure_alert_indexes(db)
    readings = incidents(devices=5, per_device=40, seed=2)
    batch = positioned(readings)
    await run(db, await owner(db, "first"), batch[:90])
    # A new process replays from an earlier commit (the last 30 were written but
    # not committed) and goes on: nothing fires or resolves twice.
    restarted = await owner(db, "restarted")
    await run(db, restarted, batch[60:])
    assert await stored_alerts(db) == expected(readings)


async def test_owners_killed_between_checkpoints_leave_the_alerts_of_one_evaluation(
    db: AsyncDatabase,
) -> None:
    """What rate and anomaly rules learn is written at checkpoints only, and offsets
    are committed after them. Owners killed between checkpoints leave successors that
    replay from the last commit onto the stored states. Some of those states are
    ahead of that commit: the killed owner wrote each state that alerted at once."""
    await ensure_alert_indexes(db)
    readings = reference.incidents(seed=1)
    extra = [reference.DAMP, *reference.LEARNING]
    rules = RuleIndex(
        [Rule.model_validate(doc) for doc in [*builtin_rules(-10, 50, 0, 100), *extra]]
    )
    batch = positioned(readings)
    rnd = random.Random(0)
    states, killed, committed, at = await owner(db, "owner-0"), 0, 0, 0
    absences = Absences(db, states.owned, ConsumerProgress())
    while at < len(batch):
        chunk = batch[at : at + 40]
        await evaluate_and_record(db, states, absences, chunk, rules, [])
        at += len(chunk)
        roll = rnd.random()
        if roll < 0.3:
            assert await states.checkpoint(datetime.now(UTC)) == set()
            committed = at
        elif roll < 0.4:
            killed += 1
            states, at = await owner(db, f"owner-{killed}"), committed
            absences = Absences(db, states.owned, ConsumerProgress())
    notifications = reference.expected_notifications(readings, extra)
    assert killed >= 5
    assert await stored_alerts(db) == {
        a: "resolved" if a in alert_ids(notifications, "resolved") else "active"
        for a in alert_ids(notifications, "fired")
    }
    learned = [a for a in alert_ids(notifications, "fired") if ":learns-" in a]
    assert len(learned) > 100


async def test_an_owner_that_lost_its_partition_writes_nothing(db: AsyncDatabase) -> None:
    await ensure_alert_indexes(db)
    readings = incidents(devices=4, per_device=40, seed=3)
    batch = positioned(readings)
    first, second, third = batch[:40], batch[40:100], batch[100:]
    stalled = await owner(db, "stalled")
    await run(db, stalled, first)
    # The group moved partition 0 while `stalled` was frozen: the new owner
    # starts from the last commit (after `first`).
    new_owner = await owner(db, "new")
    await run(db, new_owner, second)
    states_before = [doc async for doc in db[ALERT_STATE].find({}).sort("_id")]
    alerts_before = await stored_alerts(db)
    # `stalled` wakes up with the next records it had fetched.
    assert await run(db, stalled, second + third) == {0}
    assert [doc async for doc in db[ALERT_STATE].find({}).sort("_id")] == states_before
    assert await stored_alerts(db) == alerts_before
    assert stalled.devices == {}
    await run(db, new_owner, third)
    assert await stored_alerts(db) == expected(readings)


async def test_a_partition_lost_mid_batch_leaves_the_others_alerts_written_with_their_states(
    db: AsyncDatabase,
) -> None:
    """In a project of its own (device keys `project|device`): the partition still owned
    writes, with the batch, the state of every alert it recorded."""
    await ensure_alert_indexes(db)
    rules = RuleIndex(
        [
            Rule.model_validate({**doc, "project_id": "prj-a"})
            for doc in builtin_rules(-10, 50, 0, 100)
        ]
    )
    hot = [replace(r, project_id="prj-a") for r in incidents(devices=2, per_device=8, seed=5)]
    kept = [i for i in positioned(hot, partition=0) if i.value.device_id == "held-0"]
    gone = [i for i in positioned(hot, partition=1) if i.value.device_id == "held-1"]
    ownership = PartitionOwnership(db, "alerts-worker", "test", "telemetry.raw", "stalled")
    stalled = HeldStates(db, ownership, 10_000)
    await stalled.partitions_assigned({0, 1})
    # The group moved partition 1 while `stalled` was evaluating.
    newer = PartitionOwnership(db, "alerts-worker", "test", "telemetry.raw", "new")
    await HeldStates(db, newer, 10_000).partitions_assigned({1})

    absences = Absences(db, stalled.owned, ConsumerProgress())
    _, _, lost = await evaluate_and_record(db, stalled, absences, kept + gone, rules, [])

    assert lost == {1}
    active = {doc["_id"]: doc async for doc in db[ALERTS].find({"status": "active"})}
    assert active, "the hot readings of held-0 fire"
    assert {a["device_id"] for a in active.values()} == {"held-0"}
    states = {doc["rule_id"]: doc async for doc in db[ALERT_STATE].find({"device_id": "held-0"})}
    for alert_id, alert in active.items():
        assert states[alert["rule_id"]]["alert"]["alert_id"] == alert_id


async def test_a_replay_of_a_batch_that_closed_an_incident_fires_nothing_again(
    db: AsyncDatabase,
) -> None:
    await ensure_alert_indexes(db)
    hot_then_calm = [
        reading(
            {
                "event_id": f"close-{i}",
                "device_id": "closing-1",
                "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
                "temperature_c": 60.0 if i < 4 else 20.0,
            }
        )
        for i in range(10)
    ]
    batch = positioned(hot_then_calm)
    first = await owner(db, "first")
    await run(db, first, batch[:3])  # fired at close-0; committed
    await run(db, first, batch[3:])  # still hot at close-3, resolved at close-4, then idle
    # Killed before committing the second batch: a new process replays it.
    await run(db, await owner(db, "restarted"), batch[3:])
    assert (
        await stored_alerts(db)
        == expected(hot_then_calm)
        == {"close-0:temperature_high": "resolved"}
    )


async def test_a_deleted_rules_open_alert_resolves_and_its_state_goes(db: AsyncDatabase) -> None:
    await ensure_alert_indexes(db)
    damp = Rule.model_validate(
        {"_id": "damp", "name": "Damp", "metric": "humidity", "operator": ">", "threshold": 80}
    )
    with_damp = RuleIndex([*RULES.by_id.values(), damp])
    wet, dry = (
        positioned(
            [
                reading(
                    {
                        "event_id": f"wet-{i}",
                        "device_id": "cellar-1",
                        "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
                        "humidity": 90.0 - 40 * (i >= 2),
                    }
                )
                for i in range(4)
            ]
        )[part]
        for part in (slice(0, 2), slice(2, 4))
    )
    states = await owner(db, "only")
    await run(db, states, wet, with_damp)
    assert await db[ALERT_STATE].count_documents({"rule_id": "damp"}) == 1
    # The rule is deleted while its alert is open: the device's next reading
    # resolves it, and nothing of the rule is kept.
    await run(db, states, dry)
    alert = await db[ALERTS].find_one({"_id": "wet-0:damp"})
    assert alert is not None
    assert (alert["status"], alert["resolved_reason"]) == ("resolved", "rule_changed")
    assert await db[ALERT_STATE].count_documents({"rule_id": "damp"}) == 0


async def test_a_state_its_readings_left_idle_is_let_go_before_the_next_checkpoint(
    db: AsyncDatabase,
) -> None:
    """Idle states decide nothing a fresh one would not. Held until the next
    checkpoint, a device's would pile up and be evaluated on each of its readings."""
    await ensure_alert_indexes(db)
    # Two of three readings past 80 (70 to clear): one 85 alone fires nothing.
    with_damp = RuleIndex([*RULES.by_id.values(), Rule.model_validate(reference.DAMP)])
    humidity = [85, 50, 50, 50, 85, 85]
    readings = [
        reading(
            {
                "event_id": f"damp-{i}",
                "device_id": "cellar-2",
                "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
                "humidity": value,
            }
        )
        for i, value in enumerate(humidity)
    ]
    batch = positioned(readings)
    states = await owner(db, "only")
    absences = Absences(db, states.owned, ConsumerProgress())
    held = states.devices

    # Batches with no checkpoint between them, as the worker runs most of them.
    await evaluate_and_record(db, states, absences, batch[:1], with_damp, [])
    assert set(held[device_key(readings[0])].states) == {"damp"}  # 85 is in its window
    await evaluate_and_record(db, states, absences, batch[1:4], with_damp, [])
    assert held[device_key(readings[0])].states == {}  # three calm values: nothing to keep
    await evaluate_and_record(db, states, absences, batch[4:], with_damp, [])

    notifications = reference.expected_notifications(readings, [reference.DAMP])
    assert notifications == ["damp-5:damp:fired"]
    assert await stored_alerts(db) == {"damp-5:damp": "active"}


async def test_transitions_recorded_again_are_not_new_and_keep_what_a_person_set(
    db: AsyncDatabase,
) -> None:
    """An alert fired and resolved within one batch is stored resolved; a replay that
    computes the same transitions records nothing new (so nothing is announced twice)
    and leaves the acknowledgement a person made in between."""
    await ensure_alert_indexes(db)
    readings = [
        reading(
            {
                "event_id": f"rec-{i}",
                "device_id": "rec-1",
                "temperature_c": value,
                "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat(),
            }
        )
        for i, value in enumerate([20.0, 60.0, 20.0])
    ]
    evaluated = evaluate_batch(positioned(readings), RULES, {}, [], datetime.now(UTC))
    kinds = [r.transition.kind for r in evaluated.raised]
    assert kinds == ["fired", "resolved"]
    notification_ids = {r.transition.notification_id for r in evaluated.raised}

    now = datetime.now(UTC)
    assert await record_transitions(db, evaluated.raised, now) == notification_ids
    alert_id = evaluated.raised[0].transition.alert["alert_id"]
    await db[ALERTS].update_one({"_id": alert_id}, {"$set": {"acknowledged_by": "ops"}})

    assert await record_transitions(db, evaluated.raised, now) == set()
    stored = await db[ALERTS].find_one({"_id": alert_id})
    assert stored is not None
    assert stored["status"] == "resolved" and stored["acknowledged_by"] == "ops"
    assert await db[ALERT_OUTBOX].count_documents({}) == 2


async def test_a_first_write_that_finds_an_older_owners_document_replaces_it(
    db: AsyncDatabase,
) -> None:
    """A state the store did not hold when its device was read is inserted at the
    checkpoint. An older owner, in the moment before it learned it had lost the
    partition, may have stored one since: the insert finds it, and the state is
    written over it under the newer epoch."""
    await ensure_alert_indexes(db)
    learning = RuleIndex([Rule.model_validate(doc) for doc in reference.LEARNING])
    await owner(db, "older")
    newer = await owner(db, "newer")
    readings = [
        reading({"event_id": f"first-{i}", "device_id": "first-1", "temperature_c": 20.0 + i,
                 "ts": (BASE_TS + timedelta(seconds=10 * i)).isoformat()})
        for i in range(4)  # within the rule's warm-up: nothing fires, nothing written yet
    ]  # fmt: skip
    absences = Absences(db, newer.owned, ConsumerProgress())
    await evaluate_and_record(db, newer, absences, positioned(readings), learning, [])
    state_id = "learns-0|first-1"
    # The older owner's write, fenced by its own (older) epoch, landed in between.
    await db[ALERT_STATE].insert_one(
        {"_id": state_id, "rule_id": "learns-0", "device_id": "first-1", "_e": 1, "stale": True}
    )

    assert await newer.checkpoint(datetime.now(UTC)) == set()

    stored = await db[ALERT_STATE].find_one({"_id": state_id})
    assert stored is not None and "stale" not in stored
    assert stored["_e"] > 1 and stored["baseline"][0] == 4
    assert stored["_applied"] == {"0": 3}
