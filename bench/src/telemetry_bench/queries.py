"""Dashboard query latency on a large store, beside the same query sent to MongoDB directly."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aggregator_worker.fold import PositionedReading
from aggregator_worker.store import raw_document
from alerts_worker.store import ALERT_OUTBOX, ALERT_SEEN, ALERT_STATE
from pymongo import AsyncMongoClient
from telemetry_common.domain.rollup_layout import (
    DEFAULT_PROJECT,
    RowSelection,
    bucket_filter,
    metric_rows,
    row_projection,
)
from telemetry_common.http.api_keys import API_KEYS
from telemetry_common.infra.mongo import (
    ALERT_RULES,
    ALERTS,
    DEVICES,
    RAW,
    ROLLUPS,
    Client,
    Database,
)
from telemetry_common.infra.ownership import PARTITION_OWNERS
from telemetry_tools.migrate import backfill_projects
from telemetry_tools.percentiles import percentile

from telemetry_bench.workload import bodies, canonical

TOP_UP_CHUNK = 5000
TOP_UP_IN_FLIGHT = 2


async def top_up_raw(mongo_url: str, db_name: str, total: int, devices: int) -> int:
    """Bulk-insert older raw readings until ``telemetry_raw`` holds ``total``; return how many."""
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        raw = client[db_name][RAW]
        missing = total - await raw.estimated_document_count()
        if missing <= 0:
            return 0
        # History from the week before the drained day: the 24-hour queries below
        # run over the day the aggregator folded, the raw store is what is large.
        end = datetime.now(UTC) - timedelta(days=1)
        chunk: list[dict[str, Any]] = []
        in_flight: set[asyncio.Task[Any]] = set()
        for i, body in enumerate(
            bodies(missing, devices, end=end, span=timedelta(days=6), prefix="dev-", seed=4)
        ):
            chunk.append(raw_document(PositionedReading(0, -1 - i, canonical(body))))
            if len(chunk) == TOP_UP_CHUNK:
                # Build the next chunk while MongoDB writes this one.
                if len(in_flight) >= TOP_UP_IN_FLIGHT:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        task.result()  # an insert that failed fails the run
                in_flight.add(asyncio.create_task(raw.insert_many(chunk, ordered=False)))
                chunk = []
        if chunk:
            in_flight.add(asyncio.create_task(raw.insert_many(chunk, ordered=False)))
        for task in in_flight:
            await task
        return missing
    finally:
        await client.close()


async def forget_earlier_drains(mongo_url: str, db_name: str) -> int:
    """Take out of the kept store what earlier runs' drains wrote; return the raw readings removed.

    Left in, every run would drain into a larger store than the last (and a
    larger store is a slower one), so no two runs' figures would compare. The
    older history ``top_up_raw`` inserted is kept: it is what takes long to fill.
    """
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[db_name]
        # What the drains, the alerts drain's rules and the keyed services' keys left.
        for collection in (
            ROLLUPS,
            DEVICES,
            PARTITION_OWNERS,
            ALERTS,
            ALERT_RULES,
            ALERT_STATE,
            ALERT_OUTBOX,
            ALERT_SEEN,
            API_KEYS,
        ):
            await db.drop_collection(collection)
        # History is inserted as if from negative offsets of partition 0 (top_up_raw).
        drained = {"_src": {"$not": {"$regex": "^0:-"}}}
        removed = (await db[RAW].delete_many(drained)).deleted_count
        # A store kept from before projects: its history is the default project's.
        await backfill_projects(db, batch=10_000)
        return removed
    finally:
        await client.close()


Query = Callable[[str], Awaitable[Any]]


# A query that takes seconds (a count the server cannot answer from metadata)
# gets fewer samples rather than stretching the run past its budget.
SAMPLE_BUDGET_S = 20.0
MIN_SAMPLES = 5


async def _sample(query: Query, devices: list[str], samples: int) -> list[float]:
    out: list[float] = []
    deadline = time.perf_counter() + SAMPLE_BUDGET_S
    for device in devices[:samples]:
        if len(out) >= MIN_SAMPLES and time.perf_counter() > deadline:
            break
        started = time.perf_counter()
        await query(device)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def _sample_in_turns(
    first: Query, second: Query, devices: list[str], samples: int
) -> tuple[list[float], list[float]]:
    """Latencies of two queries asked alternately for each device, which goes first
    changing every time."""
    a: list[float] = []
    b: list[float] = []
    deadline = time.perf_counter() + 2 * SAMPLE_BUDGET_S
    for i, device in enumerate(devices[:samples]):
        if len(a) >= MIN_SAMPLES and time.perf_counter() > deadline:
            break
        order = ((first, a), (second, b)) if i % 2 == 0 else ((second, b), (first, a))
        for query, out in order:
            started = time.perf_counter()
            await query(device)
            out.append((time.perf_counter() - started) * 1000)
    return a, b


@dataclass
class Latencies:
    """One dashboard query's latencies in ms."""

    through_api: list[float]
    direct: list[float]
    # Through the same API where keys are required, with a read key.
    with_key: list[float]


async def measure(
    dashboard_url: str,
    mongo_url: str,
    db_name: str,
    devices: int,
    samples: int,
    keyed: tuple[str, str],
) -> dict[str, Latencies]:
    """Per dashboard query: latencies through the API, through the API requiring keys
    (``keyed``: its URL and a read key), and of the same query sent to MongoDB directly."""
    rng = random.Random(5)
    picks = [f"dev-{rng.randrange(devices)}" for _ in range(samples)]
    now = datetime.now(UTC)
    day_ago = now - timedelta(hours=24)
    client: Client = AsyncMongoClient(mongo_url, tz_aware=True)
    db: Database = client[db_name]
    results: dict[str, Latencies] = {}
    keyed_url, read_key = keyed
    try:
        async with (
            aiohttp.ClientSession(base_url=dashboard_url) as open_http,
            aiohttp.ClientSession(
                base_url=keyed_url, headers={"X-API-Key": read_key}
            ) as keyed_http,
        ):
            http = open_http

            async def api(path: str, params: dict[str, Any] | None = None) -> Any:
                async with http.get(path, params=params) as response:
                    response.raise_for_status()
                    return await response.read()

            def rollups_api(device: str) -> Awaitable[Any]:
                return api(
                    f"/devices/{device}/aggregates",
                    {
                        "metric": "temperature_c",
                        "resolution": "1m",
                        "from": day_ago.isoformat(),
                        "to": now.isoformat(),
                        "limit": "1440",
                    },
                )

            async def rollups_direct(device: str) -> Any:
                # As the API reads them (dashboard_api.rollup_pages): the device's _id
                # range newest first, only the metric's served figures, one row a bucket.
                query = bucket_filter(
                    "1m", RowSelection(DEFAULT_PROJECT, device, "temperature_c", day_ago, now)
                )
                found = db[ROLLUPS].find(query, row_projection("temperature_c"))
                docs = await found.sort("_id", -1).limit(1440 + 2).to_list()
                return [row for doc in docs for row in metric_rows(doc, "temperature_c")]

            def readings_api(device: str) -> Awaitable[Any]:
                return api(f"/devices/{device}/telemetry", {"limit": "100"})

            def readings_direct(device: str) -> Awaitable[Any]:
                mine = {"project_id": DEFAULT_PROJECT, "device_id": device}
                return db[RAW].find(mine).sort([("ts", -1), ("_id", -1)]).limit(100).to_list()

            def fleet_api(_: str) -> Awaitable[Any]:
                return api("/devices", {"limit": "100"})

            def fleet_direct(_: str) -> Awaitable[Any]:
                # As the API lists them: a project's devices in id order.
                mine = {"project_id": DEFAULT_PROJECT}
                return db[DEVICES].find(mine).sort("_id", 1).limit(100).to_list()

            def stats_api(_: str) -> Awaitable[Any]:
                return api("/stats")

            async def stats_direct(_: str) -> Any:
                return [
                    *[
                        await db[c].estimated_document_count()
                        for c in (RAW, ROLLUPS, ALERTS, DEVICES)
                    ],
                    await db[ALERTS].count_documents({"status": "active"}, limit=100_000),
                ]

            pairs: dict[str, tuple[Query, Query]] = {
                "a device's 24 h of 1-minute rollups": (rollups_api, rollups_direct),
                "a device's latest 100 readings": (readings_api, readings_direct),
                "fleet view (100 devices)": (fleet_api, fleet_direct),
                "/stats": (stats_api, stats_direct),
            }

            async def through_keyed_api(device: str) -> Any:
                nonlocal http
                http = keyed_http
                try:
                    return await through_api(device)
                finally:
                    http = open_http

            for name, (through_api, direct) in pairs.items():
                # Warm every path once so connection set-up is not in the first sample.
                await through_api(picks[0])
                await direct(picks[0])
                await through_keyed_api(picks[0])
                # Without and with keys sample by sample, in turns: the store grows under
                # the background load, so one after the other would favour the first.
                open_samples, keyed_samples = await _sample_in_turns(
                    through_api, through_keyed_api, picks, samples
                )
                results[name] = Latencies(
                    open_samples, await _sample(direct, picks, samples), keyed_samples
                )
    finally:
        await client.close()
    return results


def p50_p99(values: list[float]) -> tuple[float, float]:
    return percentile(values, 0.5), percentile(values, 0.99)
