"""Worker figures: how fast each worker drains a topic that was filled before it started."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aggregator_worker.fold import (
    BucketKey,
    BucketStarts,
    BucketState,
    PositionedReading,
    contributions,
)
from aggregator_worker.store import raw_document
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient
from telemetry_common.domain.alert_rules import builtin_rules
from telemetry_common.domain.reading import Reading, decode_kafka_value
from telemetry_common.domain.rollup_layout import ROLLUPS, windows_of
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics
from telemetry_common.infra.mongo import ALERT_RULES, RAW, Client, ensure_indexes
from telemetry_common.infra.settings import AggregatorSettings
from telemetry_tools.verify import committed_offsets

from telemetry_bench.processes import Infra, ServiceProcess, running
from telemetry_bench.report import Figure, Report
from telemetry_bench.workload import bodies, canonical

PARTITIONS = 6
# The workers' default CONSUMER_MAX_RECORDS, as in every run so far, so that
# ceilings stay comparable between runs.
INSERT_CHUNK = 2000
BUILTIN_RULES = len(builtin_rules(-10, 50, 0, 100))
# Readings whose rollup buckets are inserted bare: each makes about ten buckets.
BUCKET_SAMPLE = 20_000


async def fill(bootstrap_servers: str, topic: str, readings: list[Reading]) -> None:
    producer = build_producer(bootstrap_servers, client_id="bench-fill", linger_ms=20)
    await producer.start()
    try:
        pending = [
            await producer.send(topic, r.to_kafka_value(), key=r.device_id.encode())
            for r in readings
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def bare_consumer_rate(bootstrap_servers: str, topic: str, expected: int) -> float:
    """Readings/s a plain aiokafka consumer fetches and decodes from the start of the topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        decoded = 0
        started = time.perf_counter()
        while decoded < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=INSERT_CHUNK)
            for records in batch.values():
                for record in records:
                    decode_kafka_value(record.value)
                    decoded += 1
        return decoded / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def bare_insert_rate(mongo_url: str, db_name: str, readings: list[Reading]) -> float:
    """Readings/s MongoDB takes the aggregator's raw documents in unordered bulk inserts."""
    docs = [raw_document(PositionedReading(i % PARTITIONS, i, r)) for i, r in enumerate(readings)]
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[db_name]
        await ensure_indexes(db, timedelta(days=7))
        started = time.perf_counter()
        for i in range(0, len(docs), INSERT_CHUNK):
            await db[RAW].insert_many(docs[i : i + INSERT_CHUNK], ordered=False)
        return len(docs) / (time.perf_counter() - started)
    finally:
        await client.close()


def bucket_documents(readings: list[Reading]) -> list[dict[str, Any]]:
    """The rollup documents the aggregator writes for ``readings`` folded in one batch."""
    settings = AggregatorSettings()
    now = datetime.now(UTC)
    plan = settings.rollup_plan
    starts = BucketStarts(plan.stored)
    states: dict[str, BucketState] = {}
    for i, reading in enumerate(readings):
        placed = PositionedReading(i % PARTITIONS, i, reading)
        values = contributions(placed)
        for resolution, start in starts.of(reading.ts):
            key = BucketKey(reading.project_id, reading.device_id, resolution, start)
            state = states.setdefault(key.doc_id, BucketState(key, placed.partition))
            state.fold(placed.partition, placed.offset, values)
    retention = settings.stored_retention
    return [
        state.document(
            1,
            now,
            retention.get(state.key.resolution),
            windows_of(state.key.start, plan.derived_from(state.key.resolution)),
        )
        for state in states.values()
    ]


async def bare_bucket_insert_rate(mongo_url: str, db_name: str, readings: list[Reading]) -> float:
    """Readings/s MongoDB takes their rollup documents in bare unordered bulk inserts.

    No reads, no conditions and no folding are timed: what storing one document
    per (device, resolution, bucket) costs the server by itself, the bound of
    the aggregator's document design.
    """
    docs = bucket_documents(readings)
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[db_name]
        await ensure_indexes(db, timedelta(days=7), AggregatorSettings().rollup_plan.derived)
        started = time.perf_counter()
        for i in range(0, len(docs), INSERT_CHUNK):
            await db[ROLLUPS].insert_many(docs[i : i + INSERT_CHUNK], ordered=False)
        return len(readings) / (time.perf_counter() - started)
    finally:
        await client.close()


def custom_rules() -> list[dict[str, Any]]:
    """16 rules beside the 4 built-in ones, as an operator might keep: plain
    thresholds, k-of-n windows, for-durations and hysteresis, on both metrics."""
    rules = []
    for i in range(4):
        for metric, high in (("temperature_c", 40.0 + i), ("humidity", 75.0 + i)):
            rules.append({"metric": metric, "operator": ">", "threshold": high, "k": 3, "n": 5})
            rules.append(
                {
                    "metric": metric,
                    "operator": ">",
                    "threshold": high + 5,
                    "for": f"{30 * (i + 1)}s",
                    "clear_threshold": high,
                }
            )
    return rule_documents("bench-rule", rules)


def rule_documents(prefix: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules as the dashboard stores them: on every device, enabled, made now."""
    now = datetime.now(UTC)
    return [
        {
            "_id": f"{prefix}-{i}",
            "name": f"{prefix} {rule.get('kind', 'threshold')} rule {i}",
            "severity": "warning",
            "scope": "all",
            "enabled": True,
            "builtin": False,
            "created_at": now,
            "updated_at": now,
            **rule,
        }
        for i, rule in enumerate(rules)
    ]


def rules_without_a_threshold() -> list[dict[str, Any]]:
    """One rule of each kind that judges each device by itself: an anomaly rule, a rate
    rule and an absent rule, on every device (so every reading is theirs)."""
    return rule_documents(
        "bench-kind",
        [
            {"metric": "temperature_c", "kind": "anomaly"},
            {"metric": "humidity", "kind": "rate", "operator": ">", "threshold": 1.0},
            {"metric": None, "kind": "absent", "for": "1h"},
        ],
    )


async def add_rules(mongo_url: str, db_name: str, rules: list[dict[str, Any]]) -> None:
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        await client[db_name][ALERT_RULES].insert_many(rules)
    finally:
        await client.close()


def worker_env(infra: Infra, db_name: str, topic: str, run_id: str) -> dict[str, str]:
    """A worker's settings for draining ``topic`` into ``db_name``."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers,
        "MONGO_URL": infra.mongo_url,
        "MONGO_DB": db_name,
        "TELEMETRY_TOPIC": topic,
        "DLQ_TOPIC": f"bench.dlq.{run_id}",
        "ALERTS_TOPIC": f"bench.alerts.{run_id}",
    }


def drain_rate(
    infra: Infra, service: ServiceProcess, group: str, expected: int, budget_s: float
) -> tuple[float, int]:
    """Start the worker on a full topic; readings/s it commits, and how many it drained.

    It stops at the whole topic or at ``budget_s``, whichever comes first: past
    the first seconds the rate is steady, and a slow worker must not make the
    benchmark run for hours.
    """
    with running(service):
        started = time.perf_counter()
        done = 0
        while done < expected and time.perf_counter() - started < budget_s:
            if service.process is not None and service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited during the drain")
            time.sleep(0.5)
            done = asyncio.run(committed_offsets(infra.bootstrap_servers, group))
        return done / (time.perf_counter() - started), done


def run(
    report: Report,
    infra: Infra,
    run_id: str,
    db_name: str,
    readings: int,
    devices: int,
    budget_s: float,
    insert_sample: int,
) -> dict[str, float]:
    """Measure both workers' drain rates, the aggregator writing into ``db_name``."""
    topic = f"bench.drain.{run_id}"
    asyncio.run(ensure_topics(infra.bootstrap_servers, [TopicSpec(topic, PARTITIONS, {})]))
    now = datetime.now(UTC)
    stream = [
        canonical(b)
        for b in bodies(readings, devices, end=now, anomaly_rate=0.01, prefix="dev-", seed=3)
    ]
    with report.phase(f"drain: fill a topic with {readings:,} readings"):
        asyncio.run(fill(infra.bootstrap_servers, topic, stream))
    with report.phase("drain: bare consumer and bare MongoDB insert ceilings"):
        consumer_ceiling = asyncio.run(bare_consumer_rate(infra.bootstrap_servers, topic, readings))
        insert_ceiling = asyncio.run(
            bare_insert_rate(infra.mongo_url, f"bench_insert_{run_id}", stream[:insert_sample])
        )
        bucket_sample = stream[: min(insert_sample, BUCKET_SAMPLE)]
        bucket_ceiling = asyncio.run(
            bare_bucket_insert_rate(infra.mongo_url, f"bench_buckets_{run_id}", bucket_sample)
        )
    del stream

    logs = infra.work_dir / "logs"
    env = worker_env(infra, db_name, topic, run_id)
    asyncio.run(
        ensure_topics(
            infra.bootstrap_servers,
            [TopicSpec(env["DLQ_TOPIC"], 1, {}), TopicSpec(env["ALERTS_TOPIC"], 3, {})],
        )
    )
    aggregator = ServiceProcess(
        "aggregator-worker", "aggregator_worker", {**env, "CONSUMER_GROUP": f"agg-{run_id}"}, logs
    )
    with report.phase("drain: aggregator-worker"):
        aggregator_rate, aggregated = drain_rate(
            infra, aggregator, f"agg-{run_id}", readings, budget_s
        )
    rules = custom_rules()
    asyncio.run(add_rules(infra.mongo_url, db_name, rules))
    alerts = ServiceProcess(
        "alerts-worker", "alerts_worker", {**env, "CONSUMER_GROUP": f"alerts-{run_id}"}, logs
    )
    with report.phase("drain: alerts-worker"):
        alerts_rate, alerted = drain_rate(infra, alerts, f"alerts-{run_id}", readings, budget_s)
    # The same drain with the rules that learn each device (anomaly, rate) or watch it
    # (absent) beside those: into a database of its own, whose alert states start empty
    # as the first drain's did.
    kinds_db = f"bench_alert_kinds_{run_id}"
    kinds = rules_without_a_threshold()
    asyncio.run(add_rules(infra.mongo_url, kinds_db, rules + kinds))
    alerts_with_kinds = ServiceProcess(
        "alerts-worker-kinds",
        "alerts_worker",
        {**env, "MONGO_DB": kinds_db, "CONSUMER_GROUP": f"alerts-kinds-{run_id}"},
        logs,
    )
    with report.phase("drain: alerts-worker with anomaly, rate and absent rules"):
        kinds_rate, kinds_alerted = drain_rate(
            infra, alerts_with_kinds, f"alerts-kinds-{run_id}", readings, budget_s
        )

    lower = min(consumer_ceiling, insert_ceiling)
    lower_name = (
        "bare MongoDB bulk insert of the raw documents"
        if insert_ceiling <= consumer_ceiling
        else "bare aiokafka consumer decoding"
    )
    report.add(
        Figure(
            f"aggregator drain readings/s ({devices:,} devices)",
            aggregator_rate,
            "readings/s",
            lower,
            ceiling_name=lower_name,
            goal="ratio >= 0.8 of the lower ceiling",
            note=(
                f"drained {aggregated:,} of {readings:,} readings in the time budget; ceilings: "
                f"bare consumer decoding {consumer_ceiling:,.0f}/s, bare MongoDB bulk insert "
                f"{insert_ceiling:,.0f}/s ({min(insert_sample, readings):,} documents)"
            ),
        )
    )
    report.add(
        Figure(
            "aggregator drain readings/s beside its own document design's bound",
            aggregator_rate,
            "readings/s",
            bucket_ceiling,
            ceiling_name="bare MongoDB bulk insert of the rollup documents those readings make",
            note=(
                f"the first {min(insert_sample, BUCKET_SAMPLE, readings):,} readings' buckets "
                "folded in one batch and inserted with no reads or conditions; "
                "the drain must also insert the raw readings and keep device summaries"
            ),
        )
    )
    report.add(
        Figure(
            f"alerts drain readings/s ({len(rules) + BUILTIN_RULES} rules)",
            alerts_rate,
            "readings/s",
            consumer_ceiling,
            ceiling_name="bare aiokafka consumer decoding",
            note=(
                f"{BUILTIN_RULES} built-in rules and {len(rules)} custom ones (k-of-n, "
                f"for-durations, hysteresis); drained {alerted:,} of {readings:,} readings "
                "in the time budget"
            ),
        )
    )
    report.add(
        Figure(
            f"alerts drain readings/s with {len(kinds)} rules that need no threshold added",
            kinds_rate,
            "readings/s",
            alerts_rate,
            ceiling_name="the alerts drain without them",
            goal="ratio >= 0.7",
            note=(
                "an anomaly, a rate and an absent rule on every device, beside the same "
                f"{len(rules) + BUILTIN_RULES}; drained "
                f"{kinds_alerted:,} of {readings:,} readings in the time budget"
            ),
        )
    )
    report.add(
        Figure(
            "aggregator-worker peak RSS while draining",
            aggregator.peak_rss_bytes / 2**20,
            "MiB",
            None,
        )
    )
    report.add(
        Figure("alerts-worker peak RSS while draining", alerts.peak_rss_bytes / 2**20, "MiB", None)
    )
    report.sizes["drain_readings"] = readings
    report.sizes["drain_devices"] = devices
    return {"aggregator": aggregator_rate, "alerts": alerts_rate}


@dataclass(frozen=True)
class Fleet:
    """Another fleet shape the aggregator drains, beside the bench workload."""

    name: str
    devices: int
    readings: int
    span: timedelta
    description: str

    @classmethod
    def dense(cls, devices: int, seconds: int) -> Fleet:
        """``devices`` each sending a reading every second for ``seconds``."""
        return cls(
            "dense",
            devices=devices,
            readings=devices * seconds,
            span=timedelta(seconds=seconds),
            description=f"dense fleet ({devices:,} devices, a reading each per second)",
        )


def fleet_run(
    report: Report, infra: Infra, run_id: str, fleet: Fleet, budget_s: float, insert_sample: int
) -> None:
    """The aggregator's drain rate and peak RSS on ``fleet``, into a database of its own."""
    topic = f"bench.{fleet.name}.{run_id}"
    db_name = f"bench_{fleet.name}_{run_id}"
    asyncio.run(ensure_topics(infra.bootstrap_servers, [TopicSpec(topic, PARTITIONS, {})]))
    stream = [
        canonical(b)
        for b in bodies(
            fleet.readings,
            fleet.devices,
            end=datetime.now(UTC),
            span=fleet.span,
            anomaly_rate=0.01,
            prefix=f"{fleet.name}-",
            seed=5,
        )
    ]
    with report.phase(f"{fleet.name}: fill a topic with {fleet.readings:,} readings"):
        asyncio.run(fill(infra.bootstrap_servers, topic, stream))
    with report.phase(f"{fleet.name}: bare MongoDB insert ceiling"):
        sample = stream[:insert_sample]
        ceiling = asyncio.run(
            bare_insert_rate(infra.mongo_url, f"bench_{fleet.name}_insert_{run_id}", sample)
        )
    del stream
    group = f"agg-{fleet.name}-{run_id}"
    env = {**worker_env(infra, db_name, topic, run_id), "CONSUMER_GROUP": group}
    aggregator = ServiceProcess(
        "aggregator-worker", "aggregator_worker", env, infra.work_dir / "logs"
    )
    with report.phase(f"{fleet.name}: aggregator-worker"):
        rate, drained = drain_rate(infra, aggregator, group, fleet.readings, budget_s)
    report.add(
        Figure(
            f"aggregator drain readings/s, {fleet.description}",
            rate,
            "readings/s",
            ceiling,
            ceiling_name="bare MongoDB bulk insert of the raw documents",
            note=f"drained {drained:,} of {fleet.readings:,} readings in the time budget",
        )
    )
    report.add(
        Figure(
            f"aggregator-worker peak RSS, {fleet.description}",
            aggregator.peak_rss_bytes / 2**20,
            "MiB",
            None,
            goal="< 512 MiB" if fleet.devices >= 100_000 else "",
        )
    )
