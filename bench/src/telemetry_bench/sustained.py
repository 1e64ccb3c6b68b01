"""The highest rate the whole local stack holds: posted readings in, both workers keeping up.

A rate holds when, over ``hold_s`` after a warm-up, the ingestion API took what
was posted (the topic grew by at least 95% of it) and neither consumer group's
lag grew by more than a few seconds' worth of readings, judged on lag sampled
every few seconds (batches are committed in steps, so lag is never flat).
Trials start above the slowest drain rate measured alone, since the services
now share the machine with the API and the load generator, and step down until
one holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from telemetry_tools.verify import group_lag

# Lag may rise by this many seconds of readings over the hold and still count as
# not growing: one batch in flight when each sample is taken.
LAG_SLACK_S = 5.0
LAG_SAMPLE_EVERY_S = 3.0
DELIVERED_SHARE = 0.95


@dataclass(frozen=True)
class Trial:
    target: float
    delivered: float
    lag_growth: dict[str, int]

    def holds(self) -> bool:
        slack = LAG_SLACK_S * self.target
        return self.delivered >= DELIVERED_SHARE * self.target and all(
            growth <= slack for growth in self.lag_growth.values()
        )


async def topic_end(bootstrap_servers: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


async def lags(bootstrap_servers: str, topic: str, groups: list[str]) -> dict[str, int]:
    return {group: await group_lag(bootstrap_servers, group, topic) for group in groups}


def wait_for_growth(bootstrap_servers: str, topic: str, timeout_s: float) -> None:
    """Return once the topic holds more than it did at the call (bounded)."""
    before = asyncio.run(topic_end(bootstrap_servers, topic))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if asyncio.run(topic_end(bootstrap_servers, topic)) > before:
            return


def wait_drained(bootstrap_servers: str, topic: str, groups: list[str], timeout_s: float) -> None:
    """Let what a trial left behind drain, so the next one starts level (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(asyncio.run(lags(bootstrap_servers, topic, groups)).values()):
            return
        time.sleep(1.0)


def trial(
    load: Callable[[float], AbstractContextManager[None]],
    bootstrap_servers: str,
    topic: str,
    groups: list[str],
    rate: float,
    warmup_s: float,
    hold_s: float,
) -> Trial:
    samples: list[dict[str, int]] = []
    with load(rate):
        # The warm-up counts from the load's first readings in the topic, not from
        # its start: a load generator slow to start (a busy CI machine) would
        # otherwise leave part of the hold empty.
        wait_for_growth(bootstrap_servers, topic, timeout_s=30.0)
        time.sleep(warmup_s)
        end_before = asyncio.run(topic_end(bootstrap_servers, topic))
        started = time.monotonic()
        while (left := started + hold_s - time.monotonic()) > 0:
            samples.append(asyncio.run(lags(bootstrap_servers, topic, groups)))
            time.sleep(min(LAG_SAMPLE_EVERY_S, left))
        samples.append(asyncio.run(lags(bootstrap_servers, topic, groups)))
        end_after = asyncio.run(topic_end(bootstrap_servers, topic))
        elapsed = time.monotonic() - started
    # A worker's lag moves in steps of a whole batch: the mean of the last quarter
    # of the samples against that of the first says whether it grew.
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    return Trial(
        target=rate,
        delivered=(end_after - end_before) / elapsed,
        lag_growth={
            g: round(sum(s[g] for s in last) / quarter - sum(s[g] for s in first) / quarter)
            for g in groups
        },
    )


def highest_held_rate(
    load: Callable[[float], AbstractContextManager[None]],
    bootstrap_servers: str,
    topic: str,
    groups: list[str],
    *,
    start_rate: float,
    warmup_s: float,
    hold_s: float,
    trials: int,
    step: float = 0.8,
) -> tuple[Trial | None, list[Trial]]:
    """The first trial that holds, stepping the rate down from ``start_rate``; all trials."""
    done: list[Trial] = []
    rate = start_rate
    for _ in range(trials):
        wait_drained(bootstrap_servers, topic, groups, timeout_s=hold_s * 2)
        result = trial(load, bootstrap_servers, topic, groups, rate, warmup_s, hold_s)
        done.append(result)
        if result.holds():
            return result, done
        rate *= step
    return None, done
