"""One alert and one alerts.triggered message per transition while alerts workers are killed -9.

Devices run through incidents (breach, hold, clear, breach again) while real
`python -m alerts_worker` processes are SIGKILLed at random moments and
restarted; the second test runs two in one group, so partitions (and the
(rule, device) states) move between them mid-incident. The alerts and the
messages must then be exactly those of one uninterrupted evaluation of the
same readings: none missing, none twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from integration.alerts_reference import alert_ids, expected_notifications
from integration.processes import WorkerProcess, kill_at_random_moments, wait_caught_up
from integration.readings import BASE_TS, reading
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.alert_rules import RuleCreate
from telemetry_common.domain.reading import Reading
from telemetry_common.infra.mongo import ALERT_RULES, ALERTS
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics, read_topic

pytestmark = pytest.mark.integration

DEVICES = 30
READINGS_PER_DEVICE = 80
KILLS = 4
# A person's rule beside the built-in ones: k-of-n, hysteresis and a cooldown.
HUMIDITY_RULE = RuleCreate.model_validate(
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
).model_dump(by_alias=True)


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
    expected = expected_notifications(readings, [{**HUMIDITY_RULE, "_id": "damp"}])
    await db[ALERT_RULES].insert_one({**HUMIDITY_RULE, "_id": "damp", "builtin": False})
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
    expected = expected_notifications(readings, [{**HUMIDITY_RULE, "_id": "damp"}])
    await db[ALERT_RULES].insert_one({**HUMIDITY_RULE, "_id": "damp", "builtin": False})
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
