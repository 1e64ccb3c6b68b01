"""The aggregator on real Kafka and MongoDB: exact rollups, replays, poison records, outages."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stdout

import pytest
from aggregator_worker.worker import run as run_aggregator
from aiokafka import AIOKafkaProducer
from integration.readings import fleet_readings, publish, reading
from integration.recompute import (
    assert_rollups_equal,
    recompute_minute_rollups,
    stored_minute_rollups,
    stored_rows,
)
from integration.workers import metric_value, running
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.rollup_layout import RowSelection, bucket_filter, metric_rows
from telemetry_common.infra.kafka import dlq
from telemetry_common.infra.mongo import DEVICES, RAW, ROLLUPS
from telemetry_common.infra.settings import AggregatorSettings
from telemetry_tools import dlq as dlq_cli
from telemetry_tools.servers import MongoServer, free_port
from telemetry_tools.testing import Topics, eventually, read_topic

pytestmark = pytest.mark.integration


def aggregator_settings(service_env: dict, **overrides: object) -> AggregatorSettings:
    return AggregatorSettings(
        **service_env, port=free_port(), consumer_group=f"agg-{free_port()}", **overrides
    )


async def raw_count(db: AsyncDatabase) -> int:
    return await db[RAW].count_documents({})


async def test_rollups_equal_a_recomputation_from_raw_readings(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    readings = fleet_readings(devices=5, per_device=40)
    await publish(producer, topics.telemetry, readings)
    async with running(run_aggregator, aggregator_settings(service_env)):

        async def all_stored() -> bool:
            return await raw_count(db) == len(readings)

        await eventually(all_stored)
        expected = await recompute_minute_rollups(db)

        async def rollups_complete() -> bool:
            stored = await stored_minute_rollups(db)
            return sum(v["count"] for v in stored.values()) == sum(
                v["count"] for v in expected.values()
            )

        await eventually(rollups_complete)
    assert_rollups_equal(await stored_minute_rollups(db), expected)
    device = await db[DEVICES].find_one({"_id": "dev-3"})
    assert device is not None
    assert device["reading_count"] == 40
    last = max((r for r in readings if r.device_id == "dev-3"), key=lambda r: r.ts)
    assert device["last_seen"] == last.ts
    assert device["last_values"] == last.metrics


async def test_replay_and_duplicate_events_change_nothing(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    readings = fleet_readings(devices=3, per_device=30)
    await publish(producer, topics.telemetry, readings)
    # A device retrying a POST: the same event reaches Kafka again at a new offset.
    await publish(producer, topics.telemetry, readings[:10])
    expected_values = 2 * len(readings)  # two metrics per reading

    async def folded_everything() -> bool:
        stored = await stored_minute_rollups(db)
        return sum(v["count"] for v in stored.values()) == expected_values

    async with running(run_aggregator, aggregator_settings(service_env)):
        await eventually(folded_everything)
    before = await stored_minute_rollups(db)
    devices_before = [d async for d in db[DEVICES].find({}, {"updated_at": 0}).sort("_id")]

    # A replay: another consumer group reads the whole topic again into the same database,
    # exactly what a crash between the MongoDB write and the offset commit causes.
    replay_settings = aggregator_settings(service_env)
    async with running(run_aggregator, replay_settings) as registry:

        async def replay_done() -> bool:
            # Counted once each batch's writes are done, unlike records fetched.
            handled = metric_value(
                registry, "aggregator_replayed_readings_skipped_total"
            ) + metric_value(registry, "aggregator_duplicate_readings_total")
            return handled >= len(readings) + 10

        await eventually(replay_done)
        # Every bucket at every resolution had applied these offsets already.
        assert metric_value(registry, "aggregator_readings_folded_total") == 0
        assert metric_value(registry, "aggregator_replayed_readings_skipped_total") == len(readings)
        assert metric_value(
            registry, "aggregator_replayed_values_skipped_total"
        ) == expected_values * len(replay_settings.rollup_plan.stored)
    assert await stored_minute_rollups(db) == before
    assert [d async for d in db[DEVICES].find({}, {"updated_at": 0}).sort("_id")] == devices_before
    assert_rollups_equal(before, await recompute_minute_rollups(db))
    assert await raw_count(db) == len(readings)


async def test_garbage_record_goes_to_dlq_with_headers_and_the_rest_flows(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    good_before = [
        reading({"device_id": "dlq-dev", "ts": "2025-01-15T10:00:01Z", "temperature_c": 21.0})
    ]
    good_after = [
        reading({"device_id": "dlq-dev", "ts": "2025-01-15T10:00:02Z", "temperature_c": 23.0})
    ]
    await publish(producer, topics.telemetry, good_before)
    garbage = await producer.send_and_wait(
        topics.telemetry, b"\xff not json {", key=b"dlq-dev", headers=[("project", b"prj-roof")]
    )
    invalid = (
        b'{"event_id": "x1", "device_id": "dlq-dev", "received_at": "2025-01-15T10:00:00Z",'
        b' "metrics": {"t": "hot"}}'
    )
    await producer.send_and_wait(topics.telemetry, invalid, key=b"dlq-dev")
    bad_project = good_after[0].to_kafka_value()
    await producer.send_and_wait(
        topics.telemetry, bad_project, key=b"dlq-dev", headers=[("project", b"a b")]
    )
    await publish(producer, topics.telemetry, good_after)

    async with running(run_aggregator, aggregator_settings(service_env)):
        dead = await read_topic(service_env["kafka_bootstrap_servers"], topics.dlq, expected=3)

        async def good_ones_stored() -> bool:
            return await raw_count(db) == 2

        await eventually(good_ones_stored)
    assert [r.value for r in dead] == [b"\xff not json {", invalid, bad_project]
    # The project goes to the DLQ with the record, to be replayed into it.
    assert dict(dead[0].headers)["project"] == b"prj-roof"
    assert b"project" in dict(dead[2].headers)[dlq.HEADER_REASON]
    headers = dict(dead[0].headers)
    assert headers[dlq.HEADER_WORKER] == b"aggregator-worker"
    assert headers[dlq.HEADER_SOURCE_TOPIC] == topics.telemetry.encode()
    assert int(headers[dlq.HEADER_SOURCE_PARTITION]) == garbage.partition
    assert int(headers[dlq.HEADER_SOURCE_OFFSET]) == garbage.offset
    assert b"not JSON" in headers[dlq.HEADER_REASON]
    assert headers[dlq.HEADER_FAILED_AT].endswith(b"Z")
    assert dead[0].key == b"dlq-dev"
    assert b"metrics.t" in dict(dead[1].headers)[dlq.HEADER_REASON]
    [rollup] = await stored_rows(db, "1m", "temperature_c", device_id="dlq-dev")
    assert rollup["count"] == 2 and rollup["sum"] == 44.0
    # telemetry-dlq tells each record's project (none named: the default project's) and
    # lists or replays one project's records.
    out = io.StringIO()

    def list_the_roofs() -> None:
        with redirect_stdout(out):
            dlq_cli.main(
                [
                    "--bootstrap-servers", service_env["kafka_bootstrap_servers"],
                    "--topic", topics.dlq,
                    "list", "--project", "prj-roof",
                ]
            )  # fmt: skip

    await asyncio.to_thread(list_the_roofs)
    [roofs] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (roofs["project_id"], roofs["source"]["offset"]) == ("prj-roof", str(garbage.offset))
    assert dlq_cli.project_of(dead[1]) == "default"


async def test_mongodb_outage_loses_nothing_and_dead_letters_nothing(
    service_env: dict,
    topics: Topics,
    producer: AIOKafkaProducer,
    db: AsyncDatabase,
    mongo_server: MongoServer,
) -> None:
    first = fleet_readings(devices=4, per_device=10)
    second = fleet_readings(devices=4, per_device=10, start=first[-1].ts.replace(hour=11))
    settings = aggregator_settings(
        service_env, retry_backoff_initial_s=0.2, retry_backoff_max_s=1.0
    )
    async with running(run_aggregator, settings) as registry:
        await publish(producer, topics.telemetry, first)

        async def first_stored() -> bool:
            return await raw_count(db) == len(first)

        await eventually(first_stored)
        mongo_server.stop()
        try:
            await publish(producer, topics.telemetry, second)

            async def retrying() -> bool:
                return metric_value(registry, "consumer_transient_failures_total") >= 2

            await eventually(retrying, timeout_s=60)
            await asyncio.sleep(2)
        finally:
            mongo_server.start()

        async def all_stored() -> bool:
            return await raw_count(db) == len(first) + len(second)

        await eventually(all_stored, timeout_s=90)
        expected = await recompute_minute_rollups(db)

        async def rollups_complete() -> bool:
            stored = await stored_minute_rollups(db)
            return sum(v["count"] for v in stored.values()) == 2 * (len(first) + len(second))

        await eventually(rollups_complete, timeout_s=60)
        assert (
            metric_value(
                registry, "consumer_records_dead_lettered_total", {"reason": "undecodable"}
            )
            == 0
        )
    assert_rollups_equal(await stored_minute_rollups(db), expected)
    assert (
        await read_topic(
            service_env["kafka_bootstrap_servers"], topics.dlq, expected=1, timeout_s=3
        )
        == []
    )


async def test_dlq_tool_lists_and_replays_dead_letters_to_their_source(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    from telemetry_tools.dlq import describe, read_all, replay

    bootstrap = service_env["kafka_bootstrap_servers"]
    project = [("project", b"prj-roof")]
    await producer.send_and_wait(topics.telemetry, b"oops", key=b"dev-x", headers=project)
    async with running(run_aggregator, aggregator_settings(service_env)):
        await read_topic(bootstrap, topics.dlq, expected=1)
    listed = [describe(r) for r in await read_all(bootstrap, topics.dlq, idle_s=1.0)]
    assert len(listed) == 1
    assert listed[0]["worker"] == "aggregator-worker"
    assert listed[0]["source"]["topic"] == topics.telemetry
    assert listed[0]["value"] == "oops" and listed[0]["key"] == "dev-x"
    assert listed[0]["project_id"] == "prj-roof"

    assert await replay(bootstrap, await read_all(bootstrap, topics.dlq, idle_s=1.0), None) == 1
    on_source = await read_topic(bootstrap, topics.telemetry, expected=2)
    assert [r.value for r in on_source] == [b"oops", b"oops"]
    assert [r.headers for r in on_source][-1] == tuple(project)


async def test_a_changed_raw_retention_changes_the_ttl_in_place(db: AsyncDatabase) -> None:
    from datetime import timedelta

    from telemetry_common.infra.mongo import ensure_indexes

    await ensure_indexes(db, timedelta(days=7))
    # Another service starting without a retention leaves the aggregator's TTL alone.
    await ensure_indexes(db, None)
    await ensure_indexes(db, timedelta(hours=36))
    indexes = {ix["name"]: ix async for ix in await db[RAW].list_indexes()}
    assert indexes["received_at_ttl"]["expireAfterSeconds"] == 36 * 3600


async def test_each_resolution_expires_on_its_own_retention(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    readings = fleet_readings(devices=2, per_device=10)
    await publish(producer, topics.telemetry, readings)
    admin = db.client.admin
    # MongoDB's TTL monitor wakes every 60 s; a second keeps the test short.
    prior = (await admin.command("setParameter", 1, ttlMonitorSleepSecs=1))["was"]
    try:
        settings = aggregator_settings(
            service_env, rollup_resolutions="1m,1h,1d", rollup_retention="1m=2s,1h=365d"
        )
        async with running(run_aggregator, settings):

            async def all_stored() -> bool:
                return await raw_count(db) == len(readings)

            await eventually(all_stored)

        async def minutes_expired() -> bool:
            return await db[ROLLUPS].count_documents(bucket_filter("1m")) == 0

        await eventually(minutes_expired, timeout_s=60)
    finally:
        await admin.command("setParameter", 1, ttlMonitorSleepSecs=prior)
    hours = [*await stored_rows(db, "1h"), *await stored_rows(db, "1d")]
    assert sum(r["count"] for r in hours) == 2 * 2 * len(readings)  # two metrics, two resolutions
    assert all(("expire_at" in r) == (r["resolution"] == "1h") for r in hours)


async def test_a_device_id_in_two_projects_is_two_devices(
    service_env: dict, topics: Topics, producer: AIOKafkaProducer, db: AsyncDatabase
) -> None:
    """Device ids and event ids are unique within a project only: the same ones posted
    to two projects are two devices, two readings and two sets of rollups."""
    body = {"device_id": "dev-1", "ts": "2025-01-15T10:00:05Z", "event_id": "e-1"}
    await publish(producer, topics.telemetry, [reading({**body, "temperature_c": 20.0})])
    roof = reading({**body, "temperature_c": 30.0})
    await producer.send_and_wait(
        topics.telemetry, roof.to_kafka_value(), key=b"dev-1", headers=[("project", b"prj-roof")]
    )
    async with running(run_aggregator, aggregator_settings(service_env)):

        async def both_folded() -> bool:
            return await db[DEVICES].count_documents({}) == 2

        await eventually(both_folded)
    devices = {d["_id"]: d async for d in db[DEVICES].find({})}
    assert set(devices) == {"dev-1", "prj-roof|dev-1"}
    assert devices["dev-1"]["project_id"] == "default"
    assert devices["prj-roof|dev-1"]["project_id"] == "prj-roof"
    for device_key, value in (("dev-1", 20.0), ("prj-roof|dev-1", 30.0)):
        assert devices[device_key]["device_id"] == "dev-1"
        assert devices[device_key]["reading_count"] == 1
        assert devices[device_key]["last_values"] == {"temperature_c": value}
    raw = {d["_id"]: d async for d in db[RAW].find({})}
    assert set(raw) == {"e-1", "prj-roof|e-1"}
    assert raw["prj-roof|e-1"]["event_id"] == "e-1"
    assert raw["prj-roof|e-1"]["metrics"] == {"temperature_c": 30.0}
    for project_id, value in (("default", 20.0), ("prj-roof", 30.0)):
        [minute] = [
            row
            async for doc in db[ROLLUPS].find(
                bucket_filter("1m", RowSelection(project_id, "dev-1"))
            )
            for row in metric_rows(doc, "temperature_c")
        ]
        assert (minute["count"], minute["sum"]) == (1, value)
