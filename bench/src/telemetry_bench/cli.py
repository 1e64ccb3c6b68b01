"""`telemetry-bench` (`make bench`): run every benchmark, print the table, write the results.

telemetry-bench                 # the full run: under 15 minutes on 2 cores
telemetry-bench --smoke         # a few seconds' worth of each, so the code cannot rot
telemetry-bench --only drain    # the workers' drain figures and their ceilings (writes no file)
telemetry-bench --only ingest   # the ingestion API's figures and their ceilings (writes no file)
telemetry-bench --bootstrap-servers localhost:9092 --mongo-url mongodb://localhost:27017
                                # use running servers instead of starting its own
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from telemetry_common.infra.mongo import Client
from telemetry_tools.servers import REPO_ROOT, secantusd

from telemetry_bench import drain, ingest, pipeline, queries
from telemetry_bench.processes import Infra, infrastructure
from telemetry_bench.report import BENCHMARKS_MD, RESULTS_DIR, Report, machine, versions


@dataclass(frozen=True)
class Profile:
    ingest_readings: int
    single_seconds: float
    drain_readings: int
    devices: int
    stored_readings: int
    samples: int
    drain_budget_s: float
    insert_sample: int
    sustained: pipeline.SustainedTrial
    fleets: tuple[drain.Fleet, ...] = ()


PROFILES = {
    "full": Profile(
        ingest_readings=200_000,
        single_seconds=15.0,
        drain_readings=1_000_000,
        devices=10_000,
        stored_readings=5_000_000,
        samples=200,
        drain_budget_s=120.0,
        insert_sample=200_000,
        sustained=pipeline.SustainedTrial(warmup_s=10.0, hold_s=60.0, trials=4),
        fleets=(
            drain.Fleet.dense(devices=10_000, seconds=30),
            drain.Fleet(
                "wide",
                devices=100_000,
                readings=500_000,
                span=timedelta(hours=12),
                description="100,000 devices (a reading each every 2.4 h)",
            ),
        ),
    ),
    "smoke": Profile(
        ingest_readings=2_000,
        single_seconds=1.0,
        drain_readings=2_000,
        devices=50,
        stored_readings=3_000,
        samples=5,
        drain_budget_s=60.0,
        insert_sample=2_000,
        sustained=pipeline.SustainedTrial(warmup_s=1.0, hold_s=3.0, trials=2, max_rate=100.0),
        fleets=(drain.Fleet.dense(devices=20, seconds=20),),
    ),
}


# Databases a run makes for itself end in its run id (``uuid4().hex[:8]``).
RUN_DATABASE = re.compile(r"^bench_.+_[0-9a-f]{8}$")


async def remove_interrupted_runs(mongo_url: str) -> list[str]:
    """On the bench's own MongoDB, drop what runs that never finished left behind
    (killed, or stopped with Ctrl-C): a larger store is a slower one."""
    client: Client = AsyncMongoClient(mongo_url)
    try:
        stale = [n for n in await client.list_database_names() if RUN_DATABASE.match(n)]
        for name in stale:
            await client.drop_database(name)
        return stale
    finally:
        await client.close()


async def remove_run_data(infra: Infra, run_id: str) -> None:
    """Leave servers that were running before as they were: drop this run's topics and databases."""
    client: Client = AsyncMongoClient(infra.mongo_url)
    try:
        for name in await client.list_database_names():
            # The bench's own store ("bench_store_<layout>", no run id) is kept on purpose.
            if name.startswith("bench_") and name.endswith(run_id):
                await client.drop_database(name)
    finally:
        await client.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap_servers)
    await admin.start()
    try:
        ours = [
            t for t in await admin.list_topics() if t.startswith("bench.") and t.endswith(run_id)
        ]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def run(args: argparse.Namespace) -> Report:
    profile = PROFILES["smoke" if args.smoke else "full"]
    report = Report(
        profile="smoke" if args.smoke else "full",
        machine=machine(),
        versions=versions(secantusd().parent.parent.name),
    )
    run_id = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix="telemetry-bench-"))
    started = time.monotonic()
    try:
        with infrastructure(
            work_dir, args.store_dir, run_id, args.bootstrap_servers, args.mongo_url
        ) as infra:
            print(f"benchmarks ({report.profile}), run {run_id}, logs in {work_dir / 'logs'}")
            if infra.store_kept:
                # Only on its own server: on one given with --mongo-url other runs may be live.
                if stale := asyncio.run(remove_interrupted_runs(infra.mongo_url)):
                    print(f"dropped {len(stale)} databases of interrupted runs")
            rates: dict[str, float] = {}
            if args.only != "drain":
                rates = ingest.run(
                    report, infra, run_id, profile.ingest_readings, profile.single_seconds
                )
            if args.only == "ingest":
                asyncio.run(remove_run_data(infra, run_id))
                return report
            if args.only == "drain":
                # Nothing reads the drained store afterwards: a fresh one each run.
                db_name = f"bench_drain_{run_id}"
            else:
                db_name = infra.store_db
                with report.phase("drain: take earlier drains out of the kept store"):
                    asyncio.run(queries.forget_earlier_drains(infra.mongo_url, db_name))
            drain_rates = drain.run(
                report,
                infra,
                run_id,
                db_name,
                profile.drain_readings,
                profile.devices,
                profile.drain_budget_s,
                profile.insert_sample,
            )
            for fleet in profile.fleets:
                drain.fleet_run(
                    report, infra, run_id, fleet, profile.drain_budget_s, profile.insert_sample
                )
            if args.only == "drain":
                asyncio.run(remove_run_data(infra, run_id))
                return report
            # What the whole pipeline sustains: the slowest of its stages.
            sustainable = min(rates["batch_readings_per_s"], *drain_rates.values())
            pipeline.run(
                report,
                infra,
                run_id,
                db_name,
                sustainable_rate=sustainable,
                ingest_rate=rates["batch_readings_per_s"],
                sustained_trial=profile.sustained,
                devices=profile.devices,
                stored_readings=profile.stored_readings,
                samples=profile.samples,
            )
            asyncio.run(remove_run_data(infra, run_id))
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    report.sizes["seconds"] = round(time.monotonic() - started)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="telemetry-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the code, not speed"
    )
    parser.add_argument(
        "--bootstrap-servers", default=None, help="use this Kafka instead of starting one"
    )
    parser.add_argument(
        "--mongo-url", default=None, help="use this MongoDB instead of starting one"
    )
    parser.add_argument(
        "--only",
        choices=["drain", "ingest"],
        default=None,
        help="run one phase and print its figures; BENCHMARKS.md and the results stay as they are",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--benchmarks-md", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--keep", action="store_true", help="keep Kafka's data and the logs")
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=REPO_ROOT / ".local" / "bench",
        help="where the bench's own MongoDB keeps the large store between runs "
        "(filling 5,000,000 readings takes a while once); `make clean` deletes it",
    )
    args = parser.parse_args(argv)
    report = run(args)
    print()
    print(report.table())
    if args.only:
        return
    print(
        f"\nwrote {report.write_json(args.results_dir)}"
        f" and {report.write_markdown(args.benchmarks_md)}"
    )


if __name__ == "__main__":
    main()
