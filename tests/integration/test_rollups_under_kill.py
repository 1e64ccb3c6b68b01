"""Rollups stay exact while aggregator processes are killed -9 at random moments.

A stream of readings (late, out of order, device retries, any metric name) flows
into Kafka while a real `python -m aggregator_worker` process is SIGKILLed and
restarted several times; then every bucket at every resolution must equal a
recomputation from telemetry_raw. The second test runs two processes in one
group and kills them in turn, so partitions move between them mid-stream.

ROLLUP_KILL_READINGS sets the stream size (the issue's full 100,000 works; the
default is smaller so `make test` stays quick on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from integration.processes import WorkerProcess, kill_at_random_moments, wait_caught_up
from integration.readings import BASE_TS, reading
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.reading import Reading
from telemetry_common.domain.resolutions import DEFAULT_PLAN
from telemetry_common.infra.mongo import RAW
from telemetry_tools.servers import free_port
from telemetry_tools.testing import Topics
from telemetry_tools.verify import committed_offsets, rollup_mismatches

pytestmark = pytest.mark.integration

READINGS = int(os.environ.get("ROLLUP_KILL_READINGS", "20000"))
KILLS = int(os.environ.get("ROLLUP_KILL_COUNT", "5"))
RESOLUTIONS = DEFAULT_PLAN.stored
EXTRA_METRICS = ["rpm", "battery_v", "cpu_load", "signal-dbm"]


def stream(total: int, seed: int) -> list[Reading]:
    """Readings over many devices, a few seconds apart per device, in a shuffled arrival order:
    about 5% backfilled days late, 1% sent twice (a device retry, same event_id)."""
    rnd = random.Random(seed)
    devices = max(total // 200, 1)
    out: list[tuple[float, Reading]] = []
    for i in range(total):
        device = i % devices
        seq = i // devices
        ts = BASE_TS + timedelta(seconds=seq * 3 + rnd.random() * 3, minutes=device % 90)
        if rnd.random() < 0.05:
            ts -= timedelta(days=rnd.randint(1, 4), minutes=rnd.randint(0, 600))
        metrics = {
            "temperature_c": round(rnd.uniform(-20.0, 60.0), 3),
            "humidity": round(rnd.uniform(0.0, 100.0), 2),
        }
        if device % 3 == 0:
            metrics[EXTRA_METRICS[device % len(EXTRA_METRICS)]] = rnd.lognormvariate(2, 1.5)
        body = {
            "event_id": f"ev-{seed}-{i}",
            "device_id": f"kill-{device}",
            "ts": ts.isoformat(),
            "metrics": metrics,
        }
        r = reading(body)
        # Arrival roughly follows the device's own sequence, with jitter across devices.
        out.append((seq + rnd.random() * 5, r))
        if rnd.random() < 0.01:
            out.append((seq + 5 + rnd.random() * 5, r))
    out.sort(key=lambda pair: pair[0])
    return [r for _, r in out]


async def publish_in_chunks(
    producer: AIOKafkaProducer, topic: str, readings: list[Reading], chunks: int
) -> None:
    """The stream keeps arriving while the first kills happen."""
    size = max(len(readings) // chunks, 1)
    for start in range(0, len(readings), size):
        for r in readings[start : start + size]:
            await producer.send(topic, r.to_kafka_value(), key=r.device_id.encode())
        await producer.flush()
        await asyncio.sleep(0.2)


async def run_scenario(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    tmp_path: Path,
    processes_in_group: int,
    seed: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rnd = random.Random(seed)
    readings = stream(READINGS, seed)
    group = f"agg-kill-{free_port()}"
    processes = [
        # Smaller polls than the default: more batches, so more moments to die in.
        WorkerProcess(service_env, group, tmp_path, CONSUMER_MAX_RECORDS="500")
        for _ in range(processes_in_group)
    ]
    publishing = asyncio.create_task(
        publish_in_chunks(producer, topics.telemetry, readings, chunks=10)
    )
    try:
        for process in processes:
            process.start()
        kills = await kill_at_random_moments(
            processes, db[RAW].estimated_document_count, KILLS, rnd, max_delay_s=0.5
        )
        await publishing
        await wait_caught_up(
            service_env["kafka_bootstrap_servers"],
            group,
            topics.telemetry,
            processes,
            timeout_s=600,
        )
    finally:
        publishing.cancel()
        for process in processes:
            process.stop()
    unique = len({r.event_id for r in readings})
    assert await db[RAW].count_documents({}) == unique
    mismatches = await rollup_mismatches(db, RESOLUTIONS)
    with capsys.disabled():  # the figures belong in every run's output
        print(
            f"\n{processes_in_group} aggregator process(es), {len(readings)} records "
            f"({unique} unique readings): kills={kills} mismatches={len(mismatches)}"
        )
    assert kills == KILLS
    assert mismatches == [], mismatches[:20]


async def test_kill_9_during_a_stream_leaves_every_bucket_exact(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await run_scenario(service_env, topics, producer, db, tmp_path, 1, seed=1, capsys=capsys)


async def test_two_processes_killed_in_turn_rebalance_and_stay_exact(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await run_scenario(service_env, topics, producer, db, tmp_path, 2, seed=2, capsys=capsys)


def test_the_stream_has_late_duplicate_and_arbitrary_metrics() -> None:
    readings = stream(2000, seed=3)
    late = [r for r in readings if r.ts < BASE_TS - timedelta(hours=12)]
    assert 0.02 * len(readings) < len(late) < 0.1 * len(readings)
    assert len({r.event_id for r in readings}) < len(readings)
    names = {m for r in readings for m in r.metrics}
    assert set(EXTRA_METRICS) <= names
    assert all(isinstance(r.ts, datetime) for r in readings)


async def test_a_worker_paused_past_its_session_timeout_has_its_writes_refused(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    tmp_path: Path,
) -> None:
    # A frozen VM or a long pause: Kafka moves the worker's partitions to another
    # member, which starts from the last commit, while the frozen one still holds
    # a half-written batch it believes is its own.
    readings = stream(READINGS // 2, seed=31)
    bootstrap = service_env["kafka_bootstrap_servers"]
    group = f"agg-pause-{free_port()}"
    for r in readings:
        await producer.send(topics.telemetry, r.to_kafka_value(), key=r.device_id.encode())
    await producer.flush()
    stalled = WorkerProcess(service_env, group, tmp_path, CONSUMER_MAX_RECORDS="2000")
    healthy = WorkerProcess(service_env, group, tmp_path, CONSUMER_MAX_RECORDS="2000")
    try:
        stalled.start()
        # Pause it in the middle of a batch: right after its raw insert landed.
        before = await db[RAW].estimated_document_count()
        while await db[RAW].estimated_document_count() == before:
            stalled.assert_alive()
            await asyncio.sleep(0.01)
        assert stalled.process is not None
        stalled.process.send_signal(signal.SIGSTOP)
        paused_at = await committed_offsets(bootstrap, group)
        healthy.start()
        # The group gives everything to `healthy` once the session times out; it
        # refolds the paused batch from the last commit and moves past it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while await committed_offsets(bootstrap, group) < paused_at + 4 * 2000:
            healthy.assert_alive()
            assert loop.time() < deadline, "the healthy worker never took over"
            await asyncio.sleep(0.5)
        stalled.process.send_signal(signal.SIGCONT)
        while stalled.metric("consumer_partitions_lost_total") == 0:
            stalled.assert_alive()
            assert loop.time() < deadline + 60, "the resumed worker's writes were not refused"
            await asyncio.sleep(0.5)
        await wait_caught_up(bootstrap, group, topics.telemetry, [stalled, healthy], 600)
    finally:
        for process in (stalled, healthy):
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)
            process.stop()
    assert await db[RAW].count_documents({}) == len({r.event_id for r in readings})
    assert await rollup_mismatches(db, RESOLUTIONS) == []
