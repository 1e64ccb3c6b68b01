"""End-to-end latency: a POST until its rollup is visible, its alert is published,
and the alert reaches a client of the dashboard's alert stream (SSE).

The ceiling is what Kafka alone costs: a record produced (acks=all) until a
consumer already waiting on the topic receives it, sampled the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer
from pymongo import AsyncMongoClient
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT, device_id_range
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics
from telemetry_common.infra.mongo import ROLLUPS, Client
from telemetry_tools.percentiles import percentile

GAP_S = 0.05  # between samples, so each one meets the pipeline idle of its own traffic
POLL_S = 0.005
# A sample that has not arrived by then counts as this long (a lower bound) and as
# late: one stalled sample is a figure to report, not a reason to end the run.
SAMPLE_TIMEOUT_S = 60.0
# Past this many late samples the pipeline is not keeping up with the background
# load: its figures are known to be at least SAMPLE_TIMEOUT_S, and taking every
# sample would keep the run going for hours (a full run was stopped after 25
# minutes here, 92 of 200 samples in, its aggregator 600,000 records behind).
MAX_LATE_SAMPLES = 10


class LateSamples:
    """Waits for a sample's arrival; one that times out counts as SAMPLE_TIMEOUT_S."""

    def __init__(self) -> None:
        self.count = 0

    async def ms_since(self, sent: float, arrival: Awaitable[float]) -> float:
        try:
            return (await asyncio.wait_for(arrival, SAMPLE_TIMEOUT_S) - sent) * 1000
        except TimeoutError:
            self.count += 1
            return SAMPLE_TIMEOUT_S * 1000


class _Arrivals:
    """A future per key, resolved with the time a message for that key arrives."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[float]] = {}

    def expect(self, key: bytes) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future

    def arrived(self, key: bytes, at: float) -> None:
        future = self._waiting.pop(key, None)
        if future and not future.done():
            future.set_result(at)


class TopicWatcher(_Arrivals):
    """Resolves a future per key when a record with that key arrives on the topic."""

    def __init__(self, bootstrap_servers: str, topic: str):
        super().__init__()
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap_servers, group_id=None, auto_offset_reset="latest"
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicWatcher:
        await self._consumer.start()
        # Position at the end before any sample is sent, or the first one is missed.
        await self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        await self._consumer.stop()

    async def _watch(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            arrived = time.perf_counter()
            for records in batch.values():
                for record in records:
                    self.arrived(record.key or b"", arrived)


class AlertStreamWatcher(_Arrivals):
    """A client of GET /alerts/stream: resolves a future per device id as its alert arrives."""

    def __init__(self, dashboard_url: str):
        super().__init__()
        self._url = f"{dashboard_url}/alerts/stream"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._response: aiohttp.ClientResponse | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlertStreamWatcher:
        for _ in range(60):  # 503 until the dashboard's feed reached Kafka
            response = await self._session.get(self._url)
            if response.status == 200:
                break
            response.release()
            await asyncio.sleep(0.5)
        response.raise_for_status()
        self._response = response
        # The greeting comes once the subscription is in place.
        while not (await response.content.readline()).startswith(b": watching"):
            pass
        self._task = asyncio.create_task(self._watch(response))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        if self._response is not None:
            self._response.close()
        await self._session.close()

    async def _watch(self, response: aiohttp.ClientResponse) -> None:
        async for line in response.content:
            if line.startswith(b"data: "):
                arrived = time.perf_counter()
                event = orjson.loads(line[6:])
                if event.get("transition") == "fired":
                    self.arrived(event["device_id"].encode(), arrived)


async def kafka_round_trip_ms(bootstrap_servers: str, topic: str, samples: int) -> list[float]:
    producer = build_producer(bootstrap_servers, client_id="bench-rtt")
    await producer.start()
    out: list[float] = []
    try:
        async with TopicWatcher(bootstrap_servers, topic) as watcher:
            for i in range(samples):
                key = f"rtt-{i}".encode()
                arrival = watcher.expect(key)
                sent = time.perf_counter()
                await producer.send_and_wait(topic, b"{}", key=key)
                out.append((await asyncio.wait_for(arrival, 30) - sent) * 1000)
                await asyncio.sleep(GAP_S)
    finally:
        await producer.stop()
    return out


async def pipeline_latencies_ms(
    ingest_url: str,
    dashboard_url: str,
    mongo_url: str,
    db_name: str,
    bootstrap_servers: str,
    alerts_topic: str,
    samples: int,
    run_id: str,
    late: LateSamples,
) -> tuple[list[float], list[float], list[float]]:
    """POST one breaching reading per sample; time its rollup, its alert event on
    alerts.triggered and its arrival at an alert-stream client."""
    rollup_ms: list[float] = []
    alert_ms: list[float] = []
    sse_ms: list[float] = []
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    rollups = client[db_name][ROLLUPS]

    async def rollup_visible(device: str) -> float:
        # Polling is the point: the rollup is visible when a query can see it. Its
        # one-minute bucket (the bench runs the default resolutions), a device's
        # _id range as the dashboard reads it.
        visible = {"_id": device_id_range(DEFAULT_PROJECT, device, "1m")}
        while await rollups.find_one(visible, {"_id": 1}) is None:  # noqa: ASYNC110
            await asyncio.sleep(POLL_S)
        return time.perf_counter()

    try:
        async with (
            TopicWatcher(bootstrap_servers, alerts_topic) as watcher,
            AlertStreamWatcher(dashboard_url) as stream,
            aiohttp.ClientSession(base_url=ingest_url) as http,
        ):
            for i in range(samples):
                device = f"e2e-{run_id}-{i}"
                alert = watcher.expect(device.encode())
                streamed = stream.expect(device.encode())
                body = orjson.dumps(
                    {"device_id": device, "ts": iso_z(datetime.now(UTC)), "temperature_c": 80.0}
                )
                sent = time.perf_counter()
                async with http.post(
                    "/ingest", data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    response.raise_for_status()
                rollup_ms.append(await late.ms_since(sent, rollup_visible(device)))
                alert_ms.append(await late.ms_since(sent, alert))
                sse_ms.append(await late.ms_since(sent, streamed))
                if late.count >= MAX_LATE_SAMPLES:
                    break
                await asyncio.sleep(GAP_S)
    finally:
        await client.close()
    return rollup_ms, alert_ms, sse_ms


async def measure(
    *,
    ingest_url: str,
    dashboard_url: str,
    mongo_url: str,
    db_name: str,
    bootstrap_servers: str,
    alerts_topic: str,
    rtt_topic: str,
    samples: int,
    run_id: str,
) -> dict[str, float]:
    await ensure_topics(bootstrap_servers, [TopicSpec(rtt_topic, 1, {})])
    rtt = await kafka_round_trip_ms(bootstrap_servers, rtt_topic, samples)
    late = LateSamples()
    rollup, alert, sse = await pipeline_latencies_ms(
        ingest_url,
        dashboard_url,
        mongo_url,
        db_name,
        bootstrap_servers,
        alerts_topic,
        samples,
        run_id,
        late,
    )
    return {
        "late": late.count,
        "taken": len(rollup),
        "rtt_p50": percentile(rtt, 0.5),
        "rtt_p99": percentile(rtt, 0.99),
        "rollup_p50": percentile(rollup, 0.5),
        "rollup_p99": percentile(rollup, 0.99),
        "alert_p50": percentile(alert, 0.5),
        "alert_p99": percentile(alert, 0.99),
        "sse_p50": percentile(sse, 0.5),
        "sse_p99": percentile(sse, 0.99),
    }
