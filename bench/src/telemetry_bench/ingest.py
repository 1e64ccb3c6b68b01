"""Ingestion figures: `/ingest/batch` readings/s and `/ingest` requests/s and p99."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
from ingestion_api.publish import PRODUCER_OPTIONS, send_batches
from telemetry_common.domain.reading import Reading
from telemetry_common.http.api_keys import INGEST
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics
from telemetry_tools.percentiles import percentile

from telemetry_bench.http_load import LoadResult, combined, post_all, run_on_uvloop
from telemetry_bench.processes import (
    Infra,
    ServiceProcess,
    issue_bench_key,
    keys_required,
    running,
    wait_until_keys_loaded,
)
from telemetry_bench.report import Figure, Report
from telemetry_bench.workload import bodies, canonical

BATCH_SIZE = 500
BATCH_CLIENTS = 4
SINGLE_CLIENTS = 32
CALM_CLIENTS = 4
FLOOD_CLIENTS = 16
# Turns of single requests with and without keys, each half the single run's time.
SINGLE_TURNS = 4
# Requests/s of the bench's one key: far above what one process serves.
GATEWAY_KEY_RATE = 1_000_000


async def bare_producer_rate(bootstrap_servers: str, topic: str, readings: list[Reading]) -> float:
    """Readings/s a plain aiokafka producer (same settings as the API's) gets acknowledged,
    one ``send()`` per record: the issue's ceiling."""
    values = [(r.device_id.encode(), r.to_kafka_value()) for r in readings]
    producer = build_producer(bootstrap_servers, client_id="bench-ceiling", **PRODUCER_OPTIONS)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*pending)
        return len(values) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def batched_producer_rate(
    bootstrap_servers: str, topic: str, readings: list[Reading]
) -> float:
    """Readings/s the API's own publishing (a record batch per partition) reaches with no
    HTTP and no parsing: BATCH_CLIENTS batches of BATCH_SIZE in flight, as the HTTP run."""
    producer = build_producer(
        bootstrap_servers, client_id="bench-ceiling-batched", **PRODUCER_OPTIONS
    )
    await producer.start()
    chunks = iter([readings[i : i + BATCH_SIZE] for i in range(0, len(readings), BATCH_SIZE)])

    async def one_client() -> None:
        for chunk in chunks:
            await send_batches(producer, topic, chunk)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(BATCH_CLIENTS)))
        return len(readings) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def flood_effect(url: str, bodies_: list[bytes], seconds: float) -> tuple[float, float]:
    """p99 ms of well-behaved devices alone, then while one device floods the API."""
    calm_bodies = bodies_[len(bodies_) // 2 :]
    alone = await post_all(
        url, "/ingest", calm_bodies, concurrency=CALM_CLIENTS, duration_s=seconds
    )
    flood_body = [orjson.dumps({"device_id": "flood", "temperature_c": 20.0})]
    beside, _ = await asyncio.gather(
        post_all(url, "/ingest", calm_bodies[::-1], concurrency=CALM_CLIENTS, duration_s=seconds),
        post_all(url, "/ingest", flood_body, concurrency=FLOOD_CLIENTS, duration_s=seconds),
    )
    return (
        percentile(alone.latencies_s, 0.99) * 1000,
        percentile(beside.latencies_s, 0.99) * 1000,
    )


def run(
    report: Report, infra: Infra, run_id: str, readings: int, single_seconds: float
) -> dict[str, float]:
    """Measure ingestion; return the figures later phases size their background load on."""
    topic, ceiling_topic = f"bench.ingest.{run_id}", f"bench.ingest-ceiling.{run_id}"
    asyncio.run(
        ensure_topics(
            infra.bootstrap_servers, [TopicSpec(topic, 6, {}), TopicSpec(ceiling_topic, 6, {})]
        )
    )
    now = datetime.now(UTC)
    items = list(bodies(readings, devices=1000, end=now, prefix=f"ing-{run_id}-"))
    canonical_readings = [canonical(item) for item in items]
    with report.phase("ingest: bare producer ceilings"):
        ceiling = asyncio.run(
            bare_producer_rate(infra.bootstrap_servers, ceiling_topic, canonical_readings)
        )
        batched_ceiling = asyncio.run(
            batched_producer_rate(infra.bootstrap_servers, ceiling_topic, canonical_readings)
        )

    env = {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers, "TELEMETRY_TOPIC": topic}
    logs = infra.work_dir / "logs"
    api = ServiceProcess("ingestion-api", "ingestion_api", env, logs)
    batches = [orjson.dumps(items[i : i + BATCH_SIZE]) for i in range(0, len(items), BATCH_SIZE)]
    # Fresh readings for the single-reading run: the batch run's would all be duplicates
    # only in the batch's own eyes, but the stream should stay realistic.
    singles = [
        orjson.dumps(b)
        for b in bodies(
            min(readings, 200_000), devices=1000, end=now, prefix=f"one-{run_id}-", seed=2
        )
    ]

    def post_singles(
        url: str, headers: dict[str, str] | None = None, seconds: float = single_seconds
    ) -> LoadResult:
        return run_on_uvloop(
            post_all(
                url,
                "/ingest",
                singles,
                concurrency=SINGLE_CLIENTS,
                duration_s=seconds,
                headers=headers,
            )
        )

    def post_batches(url: str, headers: dict[str, str] | None = None) -> LoadResult:
        return run_on_uvloop(
            post_all(url, "/ingest/batch", batches, concurrency=BATCH_CLIENTS, headers=headers)
        )

    # The same API where keys are required (as docker-compose and Kubernetes run it),
    # posting with a project's key: what authentication, the project's Kafka header and
    # its quota bookkeeping cost, beside the run without keys.
    keys_db = f"bench_keys_{run_id}"
    project_key = asyncio.run(issue_bench_key(infra.mongo_url, keys_db, [INGEST]))
    # One key posts everything here: its per-key limit is raised out of the way (still
    # counted, never refusing), as an operator does for a gateway posting for a fleet.
    keyed_env = {
        **env,
        **keys_required(infra.mongo_url, keys_db),
        "KEY_RATE_LIMIT": str(GATEWAY_KEY_RATE),
        "KEY_RATE_BURST": str(GATEWAY_KEY_RATE),
    }
    keyed_api = ServiceProcess("ingestion-api-keyed", "ingestion_api", keyed_env, logs)
    with_key = {"X-API-Key": project_key}

    with running(api, keyed_api):
        check = {"device_id": f"key-check-{run_id}", "temperature_c": 0.0}
        wait_until_keys_loaded(keyed_api.url, "/ingest", project_key, json=check)
        with report.phase("ingest: the API, batches and single readings, without and with keys"):
            # In turns (without, with, then with, without, ...): neither is always
            # the one measured on a warmer or a fuller broker. Single requests, whose
            # figures move most from one run to the next, take several turns.
            batch = post_batches(api.url)
            keyed_batch = post_batches(keyed_api.url, with_key)
            open_runs: list[LoadResult] = []
            keyed_runs: list[LoadResult] = []
            turn = single_seconds / 2
            for i in range(SINGLE_TURNS):
                pair = [(api.url, None, open_runs), (keyed_api.url, with_key, keyed_runs)]
                for url, headers, runs in pair if i % 2 else reversed(pair):
                    runs.append(post_singles(url, headers, turn))
            single, keyed_single = combined(open_runs), combined(keyed_runs)
        with report.phase("ingest: one device flooding beside the others"):
            calm, flooded = run_on_uvloop(flood_effect(api.url, singles, single_seconds))
    null_api = ServiceProcess("ingestion-api-null", "telemetry_bench.null_ingest", env, logs)
    with report.phase("ingest: the API without Kafka"), running(null_api):
        bare = post_singles(null_api.url)
    answer = ServiceProcess("answer-at-once", "telemetry_bench.answer_at_once", {}, logs)
    with report.phase("ingest: the load generator alone"), running(answer):
        client = post_singles(answer.url)

    batch_rate = readings / batch.elapsed_s
    report.add(
        Figure(
            f"/ingest/batch readings/s (batches of {BATCH_SIZE}, {BATCH_CLIENTS} clients)",
            batch_rate,
            "readings/s",
            ceiling,
            ceiling_name="bare aiokafka producer, same records, acks=all, a send() per record",
            goal="ratio >= 0.8",
            note=_failures(batch.failures, batch.statuses),
        )
    )
    report.add(
        Figure(
            "/ingest/batch readings/s against the API's own publishing",
            batch_rate,
            "readings/s",
            batched_ceiling,
            ceiling_name="the same producer, same records, a record batch per partition, "
            "no HTTP, no parsing",
            note="the share of the API's time that is Kafka's; the rest is HTTP and validation",
        )
    )
    report.add(
        Figure(
            f"/ingest requests/s ({SINGLE_CLIENTS} clients)",
            single.per_second,
            "req/s",
            bare.per_second,
            ceiling_name="same app, no Kafka",
            goal=">= 4,000 req/s",
            note="; ".join(
                filter(
                    None,
                    [
                        "one uvicorn process",
                        # Against a server that answers at once: the most the client can ask.
                        f"the load generator alone reaches {client.per_second:,.0f} req/s",
                        _failures(single.failures, single.statuses),
                    ],
                )
            ),
        )
    )
    keyed_batch_rate = readings / keyed_batch.elapsed_s
    report.add(
        Figure(
            "/ingest/batch readings/s with a project's key (keys required)",
            keyed_batch_rate,
            "readings/s",
            batch_rate,
            ceiling_name="the same without keys",
            goal="ratio >= 0.9",
            note=_failures(keyed_batch.failures, keyed_batch.statuses),
        )
    )
    report.add(
        Figure(
            "/ingest requests/s with a project's key (keys required)",
            keyed_single.per_second,
            "req/s",
            single.per_second,
            ceiling_name="the same without keys",
            goal="ratio >= 0.9",
            note="; ".join(
                filter(
                    None,
                    [
                        f"one key; KEY_RATE_LIMIT {GATEWAY_KEY_RATE:,}/s",
                        _failures(keyed_single.failures, keyed_single.statuses),
                    ],
                )
            ),
        )
    )
    report.add(
        Figure(
            "/ingest p99 latency",
            percentile(single.latencies_s, 0.99) * 1000,
            "ms",
            percentile(bare.latencies_s, 0.99) * 1000,
            ceiling_name="same app, no Kafka",
            goal="< 25 ms",
        )
    )
    report.add(
        Figure(
            f"/ingest p99 of other devices while one floods ({FLOOD_CLIENTS} clients)",
            flooded,
            "ms",
            calm,
            ceiling_name="the same clients with no flood",
            goal="ratio <= 2",
            note=f"the flooding device's requests are handled DEVICE_CONCURRENT_REQUESTS at a "
            f"time and held to DEVICE_RATE_LIMIT with 429s; {CALM_CLIENTS} clients post for the "
            "other devices",
        )
    )
    report.add(
        Figure(
            "ingestion-api peak RSS under /ingest load",
            api.peak_rss_bytes / 2**20,
            "MiB",
            None,
        )
    )
    report.sizes["ingest_batch_readings"] = readings
    return {"batch_readings_per_s": batch_rate, "single_requests_per_s": single.per_second}


def _failures(count: int, statuses: object) -> str:
    return f"{count} requests failed: {statuses}" if count else ""
