"""What a reliability check holds the system to, computed from what it stored.

- every reading the API acknowledged is in ``telemetry_raw`` (lost = acknowledged
  and missing);
- the rollups count each stored reading once (duplicated = rollup count above the
  raw count), and every bucket at every resolution equals a recomputation from the
  raw readings: count, sum, min and max exactly (sums are exact, so equal to
  ``math.fsum`` of the raw values), percentiles within the sketch's relative accuracy.

The integration tests and ``telemetry-chaos`` share these checks.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from telemetry_common.domain.resolutions import bucket_start
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    bucket_filter,
    device_prefix_range,
    metric_rows,
    served_fields,
)
from telemetry_common.domain.sketch import PERCENTILES, RELATIVE_ACCURACY
from telemetry_common.infra.mongo import ALERTS, RAW, ROLLUPS, Database

BucketId = tuple[str, str, str, Any]
# $in lists stay well under the 16 MB command limit.
CHUNK = 5000


def _device_filter(device_prefix: str | None) -> dict[str, Any]:
    if not device_prefix:
        return {}
    # A prefix range, not a regex: the prefix comes from us, but a range cannot misparse.
    return {"device_id": {"$gte": device_prefix, "$lt": device_prefix + "\U0010ffff"}}


def _bucket_id_filter(device_prefix: str | None) -> dict[str, Any]:
    if not device_prefix:
        return {}
    # Bucket ids begin with the device id: the prefix is an _id range.
    return {"_id": device_prefix_range(DEFAULT_PROJECT, device_prefix)}


async def missing_event_ids(db: Database, acknowledged: Iterable[str]) -> list[str]:
    """The acknowledged event ids that are not in telemetry_raw."""
    ids = list(dict.fromkeys(acknowledged))
    missing: list[str] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        found = {doc["_id"] async for doc in db[RAW].find({"_id": {"$in": chunk}}, {"_id": 1})}
        missing.extend(i for i in chunk if i not in found)
    return missing


async def recompute_all_rollups(
    db: Database, resolutions: dict[str, int], device_prefix: str | None = None
) -> dict[BucketId, list[float]]:
    """Every bucket's values, straight from telemetry_raw."""
    values: dict[BucketId, list[float]] = defaultdict(list)
    projection = {"device_id": 1, "ts": 1, "metrics": 1}
    async for doc in db[RAW].find(_device_filter(device_prefix), projection):
        for resolution, width in resolutions.items():
            start = bucket_start(doc["ts"], width)
            for metric, value in doc["metrics"].items():
                values[(doc["device_id"], metric, resolution, start)].append(value)
    return values


def _exact_quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


async def rollup_mismatches(
    db: Database, resolutions: dict[str, int], device_prefix: str | None = None
) -> list[str]:
    """Where stored buckets differ from a recomputation; empty when every bucket is right."""
    expected = await recompute_all_rollups(db, resolutions, device_prefix)
    stored = {
        (row["device_id"], row["sensor_type"], row["resolution"], row["timestamp"]): row
        async for doc in db[ROLLUPS].find(_bucket_id_filter(device_prefix))
        for row in metric_rows(doc)
    }
    problems = [f"{key}: stored but no raw reading" for key in stored.keys() - expected.keys()]
    problems += [f"{key}: missing" for key in expected.keys() - stored.keys()]
    for key in expected.keys() & stored.keys():
        values = sorted(expected[key])
        doc = stored[key]
        want = {"count": len(values), "sum": math.fsum(values), "min": values[0], "max": values[-1]}
        for field, value in want.items():
            if doc[field] != value:
                problems.append(f"{key}: {field} {doc[field]!r} != {value!r}")
        for name, q in PERCENTILES.items():
            exact = _exact_quantile(values, q)
            if abs(doc[name] - exact) > RELATIVE_ACCURACY * abs(exact) + 1e-300:
                problems.append(f"{key}: {name} {doc[name]!r} not within 1% of {exact!r}")
    return problems


async def value_counts(
    db: Database, resolution: str, device_prefix: str | None = None
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Values stored in raw readings and values counted in ``resolution``'s rollups,
    each per (device, metric)."""
    raw: dict[tuple[str, str], int] = defaultdict(int)
    async for doc in db[RAW].find(_device_filter(device_prefix), {"device_id": 1, "metrics": 1}):
        for metric in doc["metrics"]:
            raw[(doc["device_id"], metric)] += 1
    rolled: dict[tuple[str, str], int] = defaultdict(int)
    query = {**bucket_filter(resolution), **_bucket_id_filter(device_prefix)}
    async for doc in db[ROLLUPS].find(query):
        for metric, fields in doc["metrics"].items():
            rolled[(doc["device_id"], metric)] += served_fields(fields)["count"]
    return raw, rolled


async def double_counted(db: Database, resolution: str, device_prefix: str | None = None) -> int:
    """Readings the rollups count more than once: rollup counts above the raw count,
    per (device, metric), summed. 0 when nothing was applied twice."""
    raw, rolled = await value_counts(db, resolution, device_prefix)
    return sum(max(0, n - raw.get(key, 0)) for key, n in rolled.items())


FOREVER = datetime.max.replace(tzinfo=UTC)


def incident_violations(alerts: Iterable[dict[str, Any]]) -> list[str]:
    """Breaks of "one alert per incident": a (rule, device) with two alerts open at
    once, or one fired before the previous one resolved."""
    by_incident: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for alert in alerts:
        by_incident[(alert["rule_id"], alert["device_id"])].append(alert)
    violations = []
    for (rule_id, device_id), history in by_incident.items():
        # Alerts fired at the same instant (readings sharing a timestamp) are in
        # order only if the one resolved first comes first.
        history.sort(key=lambda a: (a["fired_at"], a["resolved_at"] or FOREVER))
        for earlier, later in pairwise(history):
            if earlier["resolved_at"] is None or earlier["resolved_at"] > later["fired_at"]:
                violations.append(
                    f"rule {rule_id} on {device_id}: {later['alert_id']} fired while "
                    f"{earlier['alert_id']} was open"
                )
    return violations


async def alerts_of(db: Database, device_prefix: str) -> list[dict[str, Any]]:
    fields = {"alert_id": 1, "rule_id": 1, "device_id": 1, "fired_at": 1, "resolved_at": 1}
    return [doc async for doc in db[ALERTS].find(_device_filter(device_prefix), fields)]


def repeated_transitions(messages: Iterable[dict[str, Any]]) -> list[str]:
    """notification_ids sent more than once on alerts.triggered."""
    counts = Counter(m["notification_id"] for m in messages)
    return [f"{key} sent {n} times" for key, n in counts.items() if n > 1]


async def committed_offsets(bootstrap_servers: str, group: str) -> int:
    """Records ``group`` has committed, summed over its partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)
    finally:
        await admin.close()


async def group_lag(bootstrap_servers: str, group: str, topic: str) -> int:
    """Records on ``topic`` past what ``group`` has committed (everything, if nothing is)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    # Subscribed (without a group) only so its metadata covers the topic's partitions.
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap_servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        ends = await consumer.end_offsets(partitions)
        return sum(
            end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
        )
    finally:
        await consumer.stop()
        await admin.close()
