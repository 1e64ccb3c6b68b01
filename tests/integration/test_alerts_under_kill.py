"""One alert and one alerts.triggered message per transition while alerts workers are killed -9.

Devices run through incidents (breach, hold, clear, breach again) while real
`python -m alerts_worker` processes are SIGKILLed at random moments and
restarted; the second test runs two in one group, so partitions (and the
(rule, device) states) move between them mid-incident. The alerts and the
messages must then be exactly those of one uninterrupted evaluation of the
same readings: none missing, none twice. Rate and anomaly rules learn from
every reading, and their states are written only at checkpoints: a kill between
two loses what they learned since, and the replay must learn it again exactly.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from integration.alerts_reference import (
    DAMP,
    DEVICES,
    LEARNING,
    alert_ids,
    expected_notifications,
    incidents,
)
from integration.processes import WorkerProcess, kill_at_random_moments, wait_caught_up
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.infra.mongo import ALERT_RULES, ALERTS
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, read_topic

pytestmark = pytest.mark.integration

KILLS = 4


async def run_scenario(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    tmp_path: Path,
    processes_in_group: int,
    seed: int,
) -> None:
    rnd = random.Random(seed)
    readings = incidents(seed)
    rules = [DAMP, *LEARNING]
    expected = expected_notifications(readings, rules)
    await db[ALERT_RULES].insert_many([{**rule, "builtin": False} for rule in rules])
    group = f"alerts-kill-{free_port()}"
    processes = [
        # Small polls: many batches, many moments to die in.
        WorkerProcess(
            service_env,
            group,
            tmp_path,
            module="alerts_worker",
            CONSUMER_MAX_RECORDS="40",
            RULES_REFRESH_S="0.5",
            # Several checkpoints in the stream, and kills between them.
            CHECKPOINT_INTERVAL_S="1",
        )
        for _ in range(processes_in_group)
    ]

    async def publish_slowly() -> None:
        for start in range(0, len(readings), DEVICES * 4):
            for r in readings[start : start + DEVICES * 4]:
                await producer.send(topics.telemetry, r.to_kafka_value(), key=r.device_id.encode())
            await producer.flush()
            # Slow enough that the stream outlasts every kill and the rebalance after
            # it (a restart and a rejoin take seconds on a busy machine).
            await asyncio.sleep(0.2)

    publishing = asyncio.create_task(publish_slowly())
    try:
        for process in processes:
            process.start()
        kills = await kill_at_random_moments(
            processes, db[ALERTS].estimated_document_count, KILLS, rnd, max_delay_s=0.3
        )
        await publishing
        bootstrap = service_env["kafka_bootstrap_servers"]
        await wait_caught_up(bootstrap, group, topics.telemetry, processes, timeout_s=300)
    finally:
        publishing.cancel()
        for process in processes:
            process.stop()
    assert kills == KILLS
    fired = alert_ids(expected, "fired")
    assert len(fired) > 3 * DEVICES  # every device had several incidents
    for rule in rules[1:]:
        assert sum(1 for a in fired if a.endswith(f":{rule['_id']}")) > DEVICES, rule

    alerts = {doc["_id"]: doc async for doc in db[ALERTS].find({})}
    assert set(alerts) == fired
    resolved = {a for a, doc in alerts.items() if doc["status"] == "resolved"}
    assert resolved == alert_ids(expected, "resolved")

    messages = await read_topic(bootstrap, topics.alerts, expected=len(expected) + 1, timeout_s=5)
    published = Counter(orjson.loads(m.value)["notification_id"] for m in messages)
    assert [n for n, times in published.items() if times > 1] == []
    assert sorted(published) == sorted(expected)


async def test_kill_9_mid_incident_yields_each_transition_once(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase, tmp_path: Path
) -> None:
    await run_scenario(service_env, topics, producer, db, tmp_path, 1, seed=1)


async def test_two_workers_killed_in_turn_rebalance_and_keep_each_transition_once(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase, tmp_path: Path
) -> None:
    await run_scenario(service_env, topics, producer, db, tmp_path, 2, seed=2)


async def test_a_worker_paused_past_its_session_timeout_records_nothing_twice(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase, tmp_path: Path
) -> None:
    # A frozen VM or a long pause, right after the worker recorded a batch's alerts
    # and before it wrote the states: Kafka moves its partitions to another member,
    # which evaluates from the last commit and writes those states under a newer
    # claim. The resumed worker's writes must be refused, and the alerts and
    # messages be those of one evaluation.
    readings = incidents(seed=5)
    expected = expected_notifications(readings, [DAMP])
    await db[ALERT_RULES].insert_one({**DAMP, "builtin": False})
    for r in readings:
        await producer.send(topics.telemetry, r.to_kafka_value(), key=r.device_id.encode())
    await producer.flush()
    bootstrap = service_env["kafka_bootstrap_servers"]
    group = f"alerts-pause-{free_port()}"
    stalled, healthy = (
        WorkerProcess(
            service_env, group, tmp_path, module="alerts_worker", CONSUMER_MAX_RECORDS="200"
        )
        for _ in range(2)
    )
    try:
        stalled.start()
        while await db[ALERTS].estimated_document_count() == 0:
            stalled.assert_alive()
            await asyncio.sleep(0.005)
        assert stalled.process is not None
        stalled.process.send_signal(signal.SIGSTOP)
        healthy.start()
        await wait_caught_up(bootstrap, group, topics.telemetry, [healthy], timeout_s=120)
        stalled.process.send_signal(signal.SIGCONT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while stalled.metric("consumer_partitions_lost_total") == 0:
            stalled.assert_alive()
            assert loop.time() < deadline, "the resumed worker's writes were not refused"
            await asyncio.sleep(0.5)
        await wait_caught_up(bootstrap, group, topics.telemetry, [stalled, healthy], 120)
    finally:
        for process in (stalled, healthy):
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)
            process.stop()

    alerts = {doc["_id"]: doc async for doc in db[ALERTS].find({})}
    assert set(alerts) == alert_ids(expected, "fired")
    resolved = {a for a, doc in alerts.items() if doc["status"] == "resolved"}
    assert resolved == alert_ids(expected, "resolved")
    messages = await read_topic(bootstrap, topics.alerts, expected=len(expected) + 1, timeout_s=5)
    published = Counter(orjson.loads(m.value)["notification_id"] for m in messages)
    assert [n for n, times in published.items() if times > 1] == []
    assert sorted(published) == sorted(expected)
