"""The four services together under background load: end-to-end latency, queries, memory."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.http.api_keys import READ
from telemetry_common.infra.kafka.topics import TopicSpec, ensure_topics

from telemetry_bench import latency, queries, sustained
from telemetry_bench.processes import (
    Infra,
    ServiceProcess,
    issue_bench_key,
    keys_required,
    running,
    wait_until_keys_loaded,
)
from telemetry_bench.report import Figure, Report

# Enough devices that each stays well under DEVICE_RATE_LIMIT at the rates used here.
BACKGROUND_DEVICES = 1000
BACKGROUND_BATCH = 50
BACKGROUND_MIN_UPLOADS_PER_S = 100


@contextmanager
def background_load(ingest_url: str, readings_per_s: float, run_id: str) -> Iterator[None]:
    """The load generator, posting batches at ``readings_per_s`` until the block ends."""
    if readings_per_s < 1:
        yield
        return
    # At low rates smaller uploads, so that a few seconds still hold many of them
    # and the rate a trial measures is the rate asked for.
    batch = max(1, min(BACKGROUND_BATCH, round(readings_per_s / BACKGROUND_MIN_UPLOADS_PER_S)))
    process = subprocess.Popen(
        [
            sys.executable, "-m", "telemetry_tools.loadgen",
            "--base-url", ingest_url,
            "--devices", str(BACKGROUND_DEVICES),
            "--rps", f"{readings_per_s / BACKGROUND_DEVICES:.3f}",
            "--batch", str(batch),
            "--duration", "3600",
            "--device-prefix", f"bg-{run_id}-",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        process.terminate()
        process.wait(30)


@dataclass(frozen=True)
class SustainedTrial:
    """How the sustained rate is searched for: each trial's warm-up and hold, how many."""

    warmup_s: float
    hold_s: float
    trials: int
    # The first trial's rate at most (the smoke run's tiny drains say little).
    max_rate: float = float("inf")


def run(
    report: Report,
    infra: Infra,
    run_id: str,
    db_name: str,
    *,
    sustainable_rate: float,
    ingest_rate: float,
    sustained_trial: SustainedTrial,
    devices: int,
    stored_readings: int,
    samples: int,
) -> None:
    topic = f"bench.live.{run_id}"
    alerts_topic = f"bench.live-alerts.{run_id}"
    dlq_topic = f"bench.live-dlq.{run_id}"
    asyncio.run(
        ensure_topics(
            infra.bootstrap_servers,
            [TopicSpec(topic, 6, {}), TopicSpec(alerts_topic, 3, {}), TopicSpec(dlq_topic, 1, {})],
        )
    )
    with report.phase(f"queries: fill telemetry_raw up to {stored_readings:,} readings"):
        topped_up = asyncio.run(
            queries.top_up_raw(infra.mongo_url, db_name, stored_readings, devices)
        )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap_servers,
        "MONGO_URL": infra.mongo_url,
        "MONGO_DB": db_name,
        "TELEMETRY_TOPIC": topic,
        "ALERTS_TOPIC": alerts_topic,
        "DLQ_TOPIC": dlq_topic,
    }
    logs = infra.work_dir / "logs"
    # Each worker its own consumer group, as in production: both read every reading.
    services = [
        ServiceProcess("ingestion-api", "ingestion_api", env, logs),
        ServiceProcess("dashboard-api", "dashboard_api", env, logs),
        ServiceProcess(
            "aggregator-worker",
            "aggregator_worker",
            {**env, "CONSUMER_GROUP": f"live-agg-{run_id}"},
            logs,
        ),
        ServiceProcess(
            "alerts-worker",
            "alerts_worker",
            {**env, "CONSUMER_GROUP": f"live-alerts-{run_id}"},
            logs,
        ),
    ]
    ingest, dashboard = services[0], services[1]
    groups = [f"live-agg-{run_id}", f"live-alerts-{run_id}"]
    with running(*services):
        with report.phase("sustained end to end"):
            held, trials = sustained.highest_held_rate(
                lambda rate: background_load(ingest.url, rate, f"{run_id}-held"),
                infra.bootstrap_servers,
                topic,
                groups,
                start_rate=min(1.2 * sustainable_rate, sustained_trial.max_rate),
                warmup_s=sustained_trial.warmup_s,
                hold_s=sustained_trial.hold_s,
                trials=sustained_trial.trials,
            )
            sustained.wait_drained(infra.bootstrap_servers, topic, groups, timeout_s=120)
        tried = ", ".join(
            f"{t.target:,.0f}/s {'held' if t.holds() else 'not held'} (lag growth "
            + ", ".join(f"{g.split('-')[1]} {n:+,}" for g, n in t.lag_growth.items())
            + ")"
            for t in trials
        )
        report.add(
            Figure(
                "sustained end to end readings/s (POST /ingest/batch, both workers keeping up)",
                held.delivered if held else 0.0,
                "readings/s",
                ingest_rate,
                ceiling_name="/ingest/batch readings/s measured alone",
                goal=">= 15,000 readings/s",
                note=f"held for {sustained_trial.hold_s:g} s; trials: {tried}",
            )
        )
        # The latency figures are taken at 70% of what the stack held (of the
        # slowest stage measured alone if no trial held).
        base = held.delivered if held else sustainable_rate
        e2e_load, query_load = 0.7 * base, 0.5 * base
        with report.phase("end-to-end latency"), background_load(ingest.url, e2e_load, run_id):
            e2e = asyncio.run(
                latency.measure(
                    ingest_url=ingest.url,
                    dashboard_url=dashboard.url,
                    mongo_url=infra.mongo_url,
                    db_name=db_name,
                    bootstrap_servers=infra.bootstrap_servers,
                    alerts_topic=alerts_topic,
                    rtt_topic=f"bench.rtt.{run_id}",
                    samples=samples,
                    run_id=run_id,
                )
            )
        # The dashboard where keys are required, read with a key of the project the
        # data is in: what identifying the caller and scoping each query costs.
        read_key = asyncio.run(
            issue_bench_key(infra.mongo_url, db_name, [READ], project_id=DEFAULT_PROJECT)
        )
        keyed_dashboard = ServiceProcess(
            "dashboard-api-keyed",
            "dashboard_api",
            {**env, **keys_required(infra.mongo_url, db_name)},
            logs,
        )
        with (
            report.phase("dashboard queries, without and with keys"),
            running(keyed_dashboard),
            background_load(ingest.url, query_load, run_id),
        ):
            # Until its key is loaded, and the project's first figures are gathered (a
            # count of each collection: minutes on a large store where counting scans).
            wait_until_keys_loaded(keyed_dashboard.url, "/stats", read_key, timeout_s=1800)
            measured = asyncio.run(
                queries.measure(
                    dashboard.url,
                    infra.mongo_url,
                    db_name,
                    devices,
                    samples,
                    keyed=(keyed_dashboard.url, read_key),
                )
            )

    load_note = f"with background ingest at {e2e_load:,.0f} readings/s (70% of the sustained rate)"
    if e2e["late"]:
        load_note += (
            f"; {e2e['late']:.0f} arrivals not seen within {latency.SAMPLE_TIMEOUT_S:g} s,"
            " counted as that long"
        )
    if e2e["taken"] < samples:
        load_note += (
            f"; sampling stopped after {e2e['taken']:.0f} of {samples} samples, the pipeline"
            " not keeping up with the background load"
        )
    for what, key, goal in (
        ("POST to rollup visible", "rollup", ""),
        ("POST to alert published on alerts.triggered", "alert", "p99 < 100 ms"),
        ("POST to alert at an SSE client of /alerts/stream", "sse", "p99 < 100 ms"),
    ):
        for q in ("p50", "p99"):
            report.add(
                Figure(
                    f"end-to-end {q}: {what}",
                    e2e[f"{key}_{q}"],
                    "ms",
                    e2e[f"rtt_{q}"],
                    ceiling_name="Kafka produce-to-consume round trip",
                    goal=goal if q == "p99" else "",
                    note=load_note if key == "rollup" and q == "p50" else "",
                )
            )
    query_note = (
        f"{stored_readings:,} readings stored for {devices:,} devices "
        f"({topped_up:,} bulk-inserted as older history), background ingest at "
        f"{query_load:,.0f} readings/s (50% of the sustained rate)"
    )
    for index, (name, latencies) in enumerate(measured.items()):
        through_api, direct = latencies.through_api, latencies.direct
        api_p50, api_p99 = queries.p50_p99(through_api)
        direct_p50, direct_p99 = queries.p50_p99(direct)
        sampled = f"{len(through_api)} samples"
        goal = "p99 < 50 ms" if name.startswith(("a device's 24 h", "/stats")) else ""
        report.add(
            Figure(
                f"dashboard p50: {name}",
                api_p50,
                "ms",
                direct_p50,
                ceiling_name="same query, MongoDB directly",
            )
        )
        report.add(
            Figure(
                f"dashboard p99: {name}",
                api_p99,
                "ms",
                direct_p99,
                ceiling_name="same query, MongoDB directly",
                goal=goal,
                note=f"{sampled}; {query_note}" if index == 0 else sampled,
            )
        )
        keyed_p50, _ = queries.p50_p99(latencies.with_key)
        report.add(
            Figure(
                f"dashboard p50 with a read key (keys required): {name}",
                keyed_p50,
                "ms",
                api_p50,
                ceiling_name="the same without keys",
                goal="ratio <= 1.1",
                note=f"{len(latencies.with_key)} samples",
            )
        )
    for service in services:
        report.add(
            Figure(
                f"{service.name} peak RSS under load", service.peak_rss_bytes / 2**20, "MiB", None
            )
        )
    report.sizes["stored_readings"] = stored_readings
    report.sizes["latency_and_query_samples"] = samples
