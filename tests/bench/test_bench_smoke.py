"""`make bench` in miniature: every figure is produced beside its ceiling, nothing timed.

The full benchmark is never part of `make test`; this run of a few seconds' worth
of each phase keeps its code from rotting, on the session's own servers.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from telemetry_bench import cli
from telemetry_tools.servers import KafkaServer, MongoServer

pytestmark = pytest.mark.integration

# Every figure the issues ask `make bench` for, by the start of its name.
EXPECTED = [
    "/ingest/batch readings/s",
    "/ingest requests/s",
    "/ingest p99 latency",
    "/ingest p99 of other devices while one floods",
    "/ingest/batch readings/s with a project's key",
    "/ingest requests/s with a project's key",
    "aggregator drain readings/s",
    "aggregator drain readings/s, dense fleet",
    "aggregator-worker peak RSS, dense fleet",
    "alerts drain readings/s",
    "sustained end to end readings/s",
    "end-to-end p50: POST to rollup visible",
    "end-to-end p99: POST to rollup visible",
    "end-to-end p99: POST to alert published",
    "end-to-end p99: POST to alert at an SSE client",
    "dashboard p99: a device's 24 h of 1-minute rollups",
    "dashboard p99: fleet view",
    "dashboard p99: /stats",
    "dashboard p50 with a read key (keys required): a device's 24 h",
    "dashboard p50 with a read key (keys required): fleet view",
    "ingestion-api peak RSS under load",
    "dashboard-api peak RSS under load",
    "aggregator-worker peak RSS under load",
    "alerts-worker peak RSS under load",
]


async def leftovers(kafka: KafkaServer, mongo: MongoServer) -> tuple[list[str], list[str]]:
    client: AsyncMongoClient = AsyncMongoClient(mongo.url)
    databases = [d for d in await client.list_database_names() if d.startswith("bench_")]
    await client.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    topics = [t for t in await admin.list_topics() if t.startswith("bench.")]
    await admin.close()
    return databases, topics


def test_smoke_run_reports_every_figure_beside_its_ceiling(
    kafka_server: KafkaServer, mongo_server: MongoServer, tmp_path: Path
) -> None:
    markdown = tmp_path / "BENCHMARKS.md"
    cli.main(
        [
            "--smoke",
            "--bootstrap-servers", kafka_server.bootstrap_servers,
            "--mongo-url", mongo_server.url,
            "--results-dir", str(tmp_path / "results"),
            "--benchmarks-md", str(markdown),
        ]
    )  # fmt: skip

    [result_file] = (tmp_path / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    assert result_file.name == result["date"][:10] + ".json"
    assert result["machine"]["cores"] >= 1 and result["machine"]["memory_gib"] > 0
    assert {"python", "kafka", "aiokafka", "pymongo", "fastapi"} <= set(result["versions"])
    figures = {f["name"]: f for f in result["figures"]}
    for expected in EXPECTED:
        assert any(name.startswith(expected) for name in figures), f"no figure {expected!r}"
    for figure in figures.values():
        assert set(figure) >= {"name", "value", "unit", "ceiling", "ratio"}
        assert figure["value"] > 0, figure
        if figure["ceiling"] is not None:
            assert figure["ceiling"] > 0, figure
            assert figure["ratio"] == pytest.approx(figure["value"] / figure["ceiling"], abs=1e-3)
        else:
            assert figure["unit"] == "MiB", figure  # only memory has no ceiling
    assert not [f for f in figures.values() if "requests failed" in f["note"]]

    text = markdown.read_text()
    assert text.startswith("# Benchmarks")
    assert f"## {result['date']} (smoke)" in text
    assert f"Machine: {result['machine']['cores']} cores" in text
    assert "| /ingest/batch readings/s" in text

    # Servers that were already running are left as they were found.
    assert asyncio.run(leftovers(kafka_server, mongo_server)) == ([], [])


def test_only_drain_prints_the_drain_figures_and_writes_nothing(
    kafka_server: KafkaServer,
    mongo_server: MongoServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.main(
        [
            "--smoke", "--only", "drain",
            "--bootstrap-servers", kafka_server.bootstrap_servers,
            "--mongo-url", mongo_server.url,
            "--results-dir", str(tmp_path / "results"),
            "--benchmarks-md", str(tmp_path / "BENCHMARKS.md"),
        ]
    )  # fmt: skip

    table = capsys.readouterr().out
    assert "| aggregator drain readings/s" in table
    assert "| aggregator drain readings/s beside its own document design's bound" in table
    assert "| alerts drain readings/s" in table
    assert "/ingest" not in table and "end-to-end" not in table
    assert list(tmp_path.iterdir()) == []
    assert asyncio.run(leftovers(kafka_server, mongo_server)) == ([], [])


async def test_databases_of_interrupted_runs_are_dropped_and_the_kept_store_is_not(
    mongo_server: MongoServer,
) -> None:
    client: AsyncMongoClient = AsyncMongoClient(mongo_server.url)
    names = ["bench_insert_0030d8ce", "bench_dense_insert_34266a73", "bench_store_v3", "iotdb_x"]
    try:
        for name in names:
            await client[name]["t"].insert_one({"x": 1})
        dropped = await cli.remove_interrupted_runs(mongo_server.url)
        left = set(await client.list_database_names())
    finally:
        for name in names:
            await client.drop_database(name)
        await client.close()
    assert {"bench_dense_insert_34266a73", "bench_insert_0030d8ce"} <= set(dropped)
    assert {"bench_store_v3", "iotdb_x"} <= left and not left & set(dropped)
