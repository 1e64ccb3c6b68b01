"""`telemetry-chaos` (`make chaos`): break things under load, then hold what was stored
to what the API acknowledged.

Each scenario drives the load generator at a steady rate while it injects one
kind of fault, lets the workers catch up, and then checks, for the readings of
that scenario only (their device ids carry the scenario's prefix):

- lost: acknowledged with a 2xx but not in ``telemetry_raw``;
- duplicated: counted in the rollups more often than stored;
- rollup mismatches: buckets that differ from a recomputation from the raw
  readings, at every resolution;
- dead letters: records the workers sent to the DLQ during the scenario, which
  must be exactly the poison records injected (none in the other scenarios).

The same runner backs ``tests/e2e/test_chaos.py`` (short) and ``make chaos``
(at least 30 seconds of load per scenario), which rewrites ``RELIABILITY.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from telemetry_common.domain.resolutions import DEFAULT_PLAN
from telemetry_common.infra.mongo import connect

from telemetry_tools import loadgen
from telemetry_tools.dlq import read_all
from telemetry_tools.servers import free_port
from telemetry_tools.stack import Stack, default_services
from telemetry_tools.verify import (
    alerts_of,
    double_counted,
    group_lag,
    incident_violations,
    missing_event_ids,
    repeated_transitions,
    rollup_mismatches,
    value_counts,
)

WORKER_GROUPS = ("aggregator-worker", "alerts-worker")
TELEMETRY_TOPIC = "telemetry.raw"
DLQ_TOPIC = "telemetry.dlq"
ALERTS_TOPIC = "alerts.triggered"
POISON_EVERY = 1000
POISON_PREFIX = b"poison-record:"


@dataclass
class Settings:
    seconds: float = 30.0
    mongo_down_s: float = 30.0
    devices: int = 1000
    rps_per_device: float = 5.0
    # Readings per /ingest/batch request: 5,000 readings/s as single requests would
    # measure the load generator and HTTP on this machine, not the pipeline.
    batch: int = 10
    catch_up_timeout_s: float = 300.0
    seed: int = 1
    # The load generator's live progress line, for people watching `make chaos`.
    progress: bool = False


@dataclass
class Outcome:
    scenario: str
    fault: str
    seconds: float
    faults_injected: int
    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    values_stored: int
    values_counted: int
    rollup_mismatches: int
    alerts: int
    alert_violations: int
    dead_letters_expected: int
    dead_letters: int
    retries: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.acknowledged > 0
            and self.lost == 0
            and self.duplicated == 0
            and self.values_counted == self.values_stored
            and self.rollup_mismatches == 0
            and self.alert_violations == 0
            and self.dead_letters == self.dead_letters_expected
        )


@dataclass
class Run:
    """What a fault injector may touch while the load flows."""

    stack: Stack
    settings: Settings
    rng: random.Random
    deadline: float
    injected: int = 0
    poison: Counter[str] = field(default_factory=Counter)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def pause(self, seconds: float) -> bool:
        """Sleep, but never past the end of the load; False when the load is over."""
        await asyncio.sleep(max(0.0, min(seconds, self.left())))
        return self.left() > 0

    async def restart_service(self, name: str) -> None:
        service = next(s for s in self.stack.services if s.name == name)
        await asyncio.to_thread(self.stack.stop_service, name, True)
        await asyncio.to_thread(self.stack.start_service, service)
        self.injected += 1


async def kill_workers(run: Run) -> None:
    """kill -9 the aggregator or the alerts worker every few seconds, and restart it."""
    while await run.pause(run.rng.uniform(2.0, 5.0)):
        await run.restart_service(run.rng.choice(WORKER_GROUPS))


async def restart_kafka(run: Run) -> None:
    """Stop the broker for a few seconds a third of the way in; the API answers 503 meanwhile."""
    if not await run.pause(run.settings.seconds / 3):
        return
    await asyncio.to_thread(run.stack.kafka.stop)
    await asyncio.sleep(min(10.0, run.settings.seconds / 3))
    await asyncio.to_thread(run.stack.kafka.start)
    run.injected += 1


async def stop_mongodb(run: Run) -> None:
    """Stop MongoDB for MONGO_DOWN seconds: workers pause and retry; nothing may reach the DLQ."""
    if not await run.pause(run.settings.seconds / 4):
        return
    await asyncio.to_thread(run.stack.mongo.stop)
    await asyncio.sleep(run.settings.mongo_down_s)
    await asyncio.to_thread(run.stack.mongo.start)
    run.injected += 1


async def kill_ingestion(run: Run) -> None:
    """kill -9 the ingestion API every few seconds; the load generator retries what was cut."""
    while await run.pause(run.rng.uniform(3.0, 6.0)):
        await run.restart_service("ingestion-api")
        await asyncio.to_thread(run.stack.wait_healthy, 60.0)


async def poison_records(run: Run) -> None:
    """Put one undecodable record on the topic for every POISON_EVERY readings of load."""
    rate = run.settings.devices * run.settings.rps_per_device
    producer = AIOKafkaProducer(bootstrap_servers=run.stack.kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        while await run.pause(POISON_EVERY / rate):
            run.injected += 1
            value = POISON_PREFIX + f"{run.injected}: not JSON {{".encode()
            await producer.send_and_wait(TELEMETRY_TOPIC, value, key=b"poison")
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str
    inject: Callable[[Run], Awaitable[None]]
    poisons: bool = False


SCENARIOS = [
    Scenario(
        "kill-workers", "kill -9 the aggregator and the alerts worker, repeatedly", kill_workers
    ),
    Scenario("restart-kafka", "stop the Kafka broker under load, then start it", restart_kafka),
    Scenario("stop-mongodb", "stop MongoDB under load, then start it", stop_mongodb),
    Scenario("kill-ingestion", "kill -9 the ingestion API under load, repeatedly", kill_ingestion),
    Scenario(
        "poison-records",
        f"an undecodable record every {POISON_EVERY} readings",
        poison_records,
        poisons=True,
    ),
]


async def dead_letters(bootstrap_servers: str) -> Counter[bytes]:
    """DLQ records by their value, each counted once per worker that gave up on it."""
    records = await read_all(bootstrap_servers, DLQ_TOPIC, idle_s=1.0)
    return Counter(r.value for r in records)


async def wait_caught_up(stack: Stack, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
        lags = [
            await group_lag(stack.kafka.bootstrap_servers, group, TELEMETRY_TOPIC)
            for group in WORKER_GROUPS
        ]
        if not any(lags):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers still behind after {timeout_s}s: {lags}")
        print(
            f"  waiting for the workers: lag {dict(zip(WORKER_GROUPS, lags, strict=True))}",
            file=sys.stderr,
        )
        await asyncio.sleep(1.0)


async def run_scenario(stack: Stack, scenario: Scenario, settings: Settings) -> Outcome:
    prefix = f"chaos-{scenario.name}-{int(time.time())}-"
    bootstrap = stack.kafka.bootstrap_servers
    dlq_before = await dead_letters(bootstrap)
    args = loadgen.build_parser().parse_args(
        [
            f"--devices={settings.devices}",
            f"--rps={settings.rps_per_device}",
            f"--batch={settings.batch}",
            f"--duration={settings.seconds}",
            f"--base-url=http://127.0.0.1:{stack.services[0].port}",
            f"--device-prefix={prefix}",
            f"--seed={settings.seed}",
            "--anomaly-rate=0.01",
            *([] if settings.progress else ["--quiet"]),
        ]
    )
    args.track_acknowledged = True
    started = time.monotonic()
    run = Run(stack, settings, random.Random(settings.seed), deadline=started + settings.seconds)
    stats, _ = await asyncio.gather(loadgen.run(args), scenario.inject(run))
    await wait_caught_up(stack, settings.catch_up_timeout_s)

    acknowledged = stats.acknowledged or []
    client = connect(stack.mongo.url, "telemetry-chaos")
    try:
        db = client["iotdb"]
        missing = await missing_event_ids(db, acknowledged)
        doubled = await double_counted(db, "1m", prefix)
        raw_values, counted_values = await value_counts(db, "1m", prefix)
        mismatches = await rollup_mismatches(db, DEFAULT_PLAN.stored, device_prefix=prefix)
        alerts = await alerts_of(db, prefix)
    finally:
        await client.close()
    transitions = [
        message
        for record in await read_all(bootstrap, ALERTS_TOPIC, idle_s=1.0)
        if (message := orjson.loads(record.value))["device_id"].startswith(prefix)
    ]
    violations = incident_violations(alerts) + repeated_transitions(transitions)
    new_dead = await dead_letters(bootstrap) - dlq_before
    examples = [f"lost {e}" for e in missing[:3]] + mismatches[:3] + violations[:3]
    unexpected = [v for v in new_dead if not v.startswith(POISON_PREFIX)]
    examples += [f"dead letter {v[:60]!r}" for v in unexpected[:3]]
    return Outcome(
        scenario=scenario.name,
        fault=scenario.fault,
        seconds=round(time.monotonic() - started, 1),
        faults_injected=run.injected,
        acknowledged=len(acknowledged),
        stored=len(acknowledged) - len(missing),
        lost=len(missing),
        duplicated=doubled,
        values_stored=sum(raw_values.values()),
        values_counted=sum(counted_values.values()),
        rollup_mismatches=len(mismatches),
        alerts=len(alerts),
        alert_violations=len(violations),
        # Each poison record is given up on by both consumer groups.
        dead_letters_expected=run.injected * len(WORKER_GROUPS) if scenario.poisons else 0,
        dead_letters=sum(new_dead.values()),
        retries=dict(stats.retried_by_reason),
        examples=examples,
    )


COLUMNS = [
    ("scenario", "scenario"),
    ("faults", "faults_injected"),
    ("acknowledged", "acknowledged"),
    ("stored", "stored"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("values stored / counted in rollups", None),
    ("rollup mismatches", "rollup_mismatches"),
    ("alerts", "alerts"),
    ("alert breaches", "alert_violations"),
    ("DLQ (expected)", None),
    ("client retries", None),
    ("result", None),
]


def _cells(outcome: Outcome) -> list[str]:
    cells = []
    for title, attr in COLUMNS:
        if attr:
            cells.append(str(getattr(outcome, attr)))
        elif title.startswith("DLQ"):
            cells.append(f"{outcome.dead_letters} ({outcome.dead_letters_expected})")
        elif title.startswith("values"):
            cells.append(f"{outcome.values_stored} / {outcome.values_counted}")
        elif title == "client retries":
            cells.append(", ".join(f"{k} {v}" for k, v in sorted(outcome.retries.items())) or "0")
        else:
            cells.append("ok" if outcome.ok else "FAILED")
    return cells


def markdown(outcomes: list[Outcome], settings: Settings) -> str:
    header = "| " + " | ".join(t for t, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    rows = ["| " + " | ".join(_cells(o)) + " |" for o in outcomes]
    faults = "\n".join(f"- **{s.name}**: {s.fault}." for s in SCENARIOS)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# Reliability

What the system survives, checked by `make chaos` (and, shorter, by `make test`):
each scenario drives {settings.devices:,} simulated devices at {settings.rps_per_device:g}
readings/s each ({settings.devices * settings.rps_per_device:,.0f} readings/s, in requests
of {settings.batch} readings) through the ingestion API for {settings.seconds:g} s while it breaks
one thing, waits for both workers to catch up, and then compares what is stored
with what the API acknowledged (2xx).

{faults}

Lost = acknowledged but not in `telemetry_raw`. Duplicated = counted in the rollups
more often than stored. Rollup mismatches = buckets, at every resolution, that differ
from a recomputation from the raw readings (count, sum, min, max exactly; percentiles
within the sketch's 1%). Values stored / counted = metric values in the stored
readings, and counted in the 1-minute rollups (equal when nothing is missing or
doubled). Alert breaches = a (rule, device) with a second alert fired while one
was open, or an alert transition sent twice on `alerts.triggered`. DLQ = records
dead-lettered during the scenario (each poison record once per consumer group).
Client retries = requests the load generator sent again after a 503/429 or a
dropped connection, with the same event ids.

## Last run ({when})

{header}
{rule}
{chr(10).join(rows)}
"""


async def run_all(stack: Stack, names: list[str], settings: Settings) -> list[Outcome]:
    outcomes = []
    for scenario in SCENARIOS:
        if names and scenario.name not in names:
            continue
        print(f"{scenario.name}: {scenario.fault} ...", file=sys.stderr, flush=True)
        outcome = await run_scenario(stack, scenario, settings)
        print(" ".join(_cells(outcome)), file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="telemetry-chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="load per scenario")
    parser.add_argument(
        "--mongo-down", type=float, default=defaults.mongo_down_s, help="seconds MongoDB is down"
    )
    parser.add_argument("--devices", type=int, default=defaults.devices)
    parser.add_argument(
        "--rps", type=float, default=defaults.rps_per_device, help="readings/s per device"
    )
    parser.add_argument("--batch", type=int, default=defaults.batch, help="readings per request")
    parser.add_argument(
        "--scenario", action="append", choices=[s.name for s in SCENARIOS], default=[]
    )
    parser.add_argument("--markdown", type=Path, default=Path("RELIABILITY.md"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = Settings(
        seconds=args.seconds,
        mongo_down_s=args.mongo_down,
        devices=args.devices,
        rps_per_device=args.rps,
        batch=args.batch,
        progress=True,
    )
    # A SIGTERM (a CI timeout, `kill`) ends the run through the finally below,
    # so the servers it started do not outlive it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="telemetry-chaos-") as data_dir:
        stack = Stack(
            data_dir=Path(data_dir),
            kafka_port=free_port(),
            controller_port=free_port(),
            mongo_port=free_port(),
            services=[s.__class__(s.name, s.module, free_port()) for s in default_services()],
            echo_logs=False,
        )
        try:
            stack.start()
            outcomes = asyncio.run(run_all(stack, args.scenario, settings))
        finally:
            stack.stop()
    args.markdown.write_text(markdown(outcomes, settings))
    if args.json:
        args.json.write_text(json.dumps([asdict(o) | {"ok": o.ok} for o in outcomes], indent=2))
    print(markdown(outcomes, settings))
    if not all(o.ok for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
