"""`telemetry-loadgen`: simulated devices posting readings at a steady rate.

    python -m telemetry_tools.loadgen --devices 10 --rps 2.0 --base-url http://localhost:8001

``--rps`` is per device. One asyncio process schedules every device against a
shared clock (next send = start + n / rate), so a slow response delays one
request, not the schedule. 429 and 503 answers are retried after Retry-After,
and a dropped connection (an API restarting) with backoff. Every reading carries
its own event_id, so a retry of a request that did land is stored once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from telemetry_tools.percentiles import percentile

SETTLE_S = 2.0
# Enough to ride out an API restart (a few seconds) or a Kafka restart (503s).
MAX_ATTEMPTS = 30
DEFAULT_METRICS = {"temperature_c": (15.0, 35.0), "humidity": (30.0, 70.0)}
# Values that breach the default thresholds (temperature 50, humidity 100).
ANOMALIES = {"temperature_c": (55.0, 80.0), "humidity": (101.0, 130.0)}


@dataclass
class Stats:
    sent: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # array('d'): 8 bytes a request, so an hour at thousands of requests/s fits.
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    retries: int = 0
    retried_by_reason: Counter[str] = field(default_factory=Counter)
    # Until the last request was scheduled (the rate the load generator kept),
    # and until the last answer came back (the rate the service took).
    send_elapsed_s: float = 0.0
    elapsed_s: float = 0.0
    accepted_by_device: Counter[str] = field(default_factory=Counter)
    # The event ids the API acknowledged (2xx): what a reliability check holds it to.
    # None unless asked for, so an hour-long run does not keep millions of strings.
    acknowledged: list[str] | None = None

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_s, q)


def parse_metrics(spec: str | None) -> dict[str, tuple[float, float]]:
    """'temperature_c=15:35,humidity=30:70' -> ranges; a bad spec says which part is wrong."""
    if not spec:
        return dict(DEFAULT_METRICS)
    metrics = {}
    for part in spec.split(","):
        name, _, bounds = part.partition("=")
        low, _, high = bounds.partition(":")
        try:
            metrics[name.strip()] = (float(low), float(high))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected name=low:high, e.g. temperature_c=15:35"
            ) from None
        if not name.strip() or float(low) > float(high):
            raise argparse.ArgumentTypeError(f"{part!r}: needs a name and low <= high")
    return metrics


def make_reading(
    device: str,
    rng: random.Random,
    metrics: dict[str, tuple[float, float]],
    anomaly_rate: float,
    ts: datetime | None = None,
) -> dict[str, Any]:
    reading: dict[str, Any] = {
        "device_id": device,
        "ts": (ts or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        # Not from the seeded rng: a rerun with the same seed sends new readings.
        "event_id": uuid.uuid4().hex,
    }
    anomalous = rng.random() < anomaly_rate
    for name, (low, high) in metrics.items():
        if anomalous and name in ANOMALIES:
            low, high = ANOMALIES[name]
        reading[name] = round(rng.uniform(low, high), 3)
    return reading


async def post(
    client: aiohttp.ClientSession, path: str, body: Any, stats: Stats, count: int
) -> None:
    for attempt in range(MAX_ATTEMPTS):
        started = time.perf_counter()
        try:
            async with client.post(
                path, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After", "1")
                payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The API may have died after storing the reading: sending the same
            # event ids again is safe, it answers "duplicate" for what it has.
            stats.retries += 1
            stats.retried_by_reason[type(exc).__name__] += 1
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
            continue
        stats.latencies_s.append(time.perf_counter() - started)
        if status in (429, 503):
            stats.retries += 1
            stats.retried_by_reason[f"http_{status}"] += 1
            await asyncio.sleep(float(retry_after))
            continue
        if status // 100 == 2:
            record_accepted(path, body, orjson.loads(payload), stats, count)
        else:
            stats.rejected[f"http_{status}"] += count
        return
    stats.rejected["gave_up_after_retries"] += count


def record_accepted(path: str, body: Any, answer: Any, stats: Stats, count: int) -> None:
    if path.endswith("/batch"):
        stats.accepted += answer["stored"] + answer["duplicate"]
        if answer["invalid"]:
            stats.rejected["invalid"] += answer["invalid"]
        for item in answer["results"]:
            # Every event id here is new to this run, so "duplicate" only answers a
            # retry whose first attempt landed unanswered: stored once, and ours.
            if item["status"] in ("stored", "duplicate"):
                stats.accepted_by_device[item["device_id"]] += 1
                if stats.acknowledged is not None:
                    stats.acknowledged.append(item["event_id"])
    else:
        stats.accepted += count
        stats.accepted_by_device[body["device_id"]] += 1
        if stats.acknowledged is not None:
            stats.acknowledged.append(body["event_id"])


def first_upload_at(index: int, fleet_size: int, interval: float, rng: random.Random) -> float:
    """When device ``index`` first uploads, in seconds after the start.

    Each device fires at a random point of its own slot of the interval: the
    fleet does not fire in lockstep, and any window holds its share of the
    uploads. (Uniformly random phases cluster: a short window of a slow fleet
    could see half or double the rate.)
    """
    return (index + rng.random()) * interval / fleet_size


async def run(args: argparse.Namespace) -> Stats:
    rng = random.Random(args.seed)
    metrics = args.metrics or dict(DEFAULT_METRICS)
    stats = Stats(acknowledged=[] if getattr(args, "track_acknowledged", False) else None)
    devices = [f"{args.device_prefix}{i}" for i in range(args.devices)]
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    in_flight: set[asyncio.Task[None]] = set()
    semaphore = asyncio.Semaphore(args.concurrency)

    async def device_loop(index: int, device: str, client: aiohttp.ClientSession) -> None:
        interval = args.batch / args.rps
        n = 0
        phase = first_upload_at(index, len(devices), interval, rng)
        while True:
            target = started + phase + n * interval
            # Judged on the schedule, not the clock: a send due before the deadline
            # is sent even if the loop runs late, so the rate holds to the end.
            if deadline and target >= deadline:
                return
            if args.total and stats.sent >= args.total:
                return
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            n += 1
            size = args.batch
            if args.total:
                size = min(size, args.total - stats.sent)
                if size <= 0:
                    return
            stats.sent += size
            await semaphore.acquire()
            if args.batch > 1:
                # A device that uploads in batches took its readings one by one
                # since its last upload, not all at once.
                now = datetime.now(UTC)
                body: Any = [
                    make_reading(
                        device,
                        rng,
                        metrics,
                        args.anomaly_rate,
                        now - timedelta(seconds=(size - 1 - i) / args.rps),
                    )
                    for i in range(size)
                ]
                coro = post(client, "/ingest/batch", body, stats, size)
            else:
                coro = post(
                    client,
                    "/ingest",
                    make_reading(device, rng, metrics, args.anomaly_rate),
                    stats,
                    1,
                )
            task = asyncio.create_task(coro)
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(lambda _: semaphore.release())

    async def progress() -> None:
        seen = 0
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - started
            rejected = sum(stats.rejected.values())
            # p99 of the last second: what the service does now, and cheap to sort.
            recent = stats.latencies_s[seen:]
            seen = len(stats.latencies_s)
            line = (
                f"sent {stats.sent}  accepted {stats.accepted}  rejected {rejected}"
                f"  rate {stats.accepted / elapsed:.1f}/s"
                f"  p99 {percentile(recent, 0.99) * 1000:.1f} ms"
            )
            print(
                "\r" + line,
                end="",
                file=sys.stderr,
                flush=True,
            )

    # aiohttp rather than httpx: httpx tops out far below what the API serves,
    # which would make the client, not the API, the thing measured (BENCHMARKS.md).
    async with aiohttp.ClientSession(
        base_url=args.base_url,
        headers=headers,
        connector=aiohttp.TCPConnector(limit=args.concurrency),
        timeout=aiohttp.ClientTimeout(total=30.0),
    ) as client:
        reporter = asyncio.create_task(progress()) if not args.quiet else None
        await asyncio.gather(*(device_loop(i, d, client) for i, d in enumerate(devices)))
        stats.send_elapsed_s = args.duration or (time.monotonic() - started)
        while in_flight:
            await asyncio.gather(*list(in_flight))
        if reporter:
            reporter.cancel()
            print(file=sys.stderr)
    stats.elapsed_s = time.monotonic() - started
    return stats


async def reading_counts(
    client: aiohttp.ClientSession, devices: list[str], known: dict[str, int] | None = None
) -> dict[str, int]:
    """Readings the dashboard counts per device (0 for a device it has not seen)."""
    limit = asyncio.Semaphore(20)

    async def one(device: str) -> tuple[str, int]:
        async with limit, client.get(f"/devices/{device}") as response:
            if response.status in (401, 403):
                # Not "0 counted": the verdict would blame the pipeline for a key.
                raise SystemExit(
                    f"the dashboard refused to read devices ({response.status}); "
                    "pass --read-key with a key that has the read scope"
                )
            found = (await response.json()) if response.status == 200 else {}
        return device, int(found.get("reading_count", 0))

    return dict(await asyncio.gather(*(one(d) for d in devices)))


async def verify(
    dashboard_url: str,
    accepted_by_device: Counter[str],
    baseline: dict[str, int],
    timeout_s: float,
    read_key: str | None = None,
) -> dict[str, Any]:
    """Ask the dashboard whether every accepted reading was counted exactly once.

    ``baseline`` holds each device's count before the run, so a device that
    already had readings (an earlier run with the same prefix) is judged on
    what this run added.
    """
    deadline = time.monotonic() + timeout_s
    added: dict[str, int] = {}
    async with dashboard_session(dashboard_url, read_key) as client:
        while True:
            pending = [d for d, n in accepted_by_device.items() if added.get(d, -1) < n]
            now = await reading_counts(client, pending)
            added.update({d: n - baseline.get(d, 0) for d, n in now.items()})
            if all(added[d] >= n for d, n in accepted_by_device.items()):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        # A replay that counts a reading twice lands after its first count; look
        # once more, at every device, after the workers had a moment to settle.
        await asyncio.sleep(SETTLE_S)
        now = await reading_counts(client, list(accepted_by_device))
        added = {d: n - baseline.get(d, 0) for d, n in now.items()}
    missing = {d: n - added[d] for d, n in accepted_by_device.items() if added[d] < n}
    doubled = {d: added[d] - n for d, n in accepted_by_device.items() if added[d] > n}
    return {
        "ok": not missing and not doubled,
        "accepted": sum(accepted_by_device.values()),
        "counted": sum(added.values()),
        "missing": sum(missing.values()),
        "double_counted": sum(doubled.values()),
        "missing_by_device": missing,
        "double_counted_by_device": doubled,
    }


def dashboard_session(dashboard_url: str, read_key: str | None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=dashboard_url,
        timeout=aiohttp.ClientTimeout(total=10.0),
        headers={"X-API-Key": read_key} if read_key else None,
    )


async def baseline_counts(
    dashboard_url: str, devices: list[str], read_key: str | None = None
) -> dict[str, int]:
    async with dashboard_session(dashboard_url, read_key) as client:
        return await reading_counts(client, devices)


def summary(stats: Stats, args: argparse.Namespace) -> dict[str, Any]:
    elapsed = stats.elapsed_s or 1e-9
    target = args.devices * args.rps
    sent_rps = stats.sent / (stats.send_elapsed_s or 1e-9)
    return {
        "sent": stats.sent,
        "accepted": stats.accepted,
        "rejected": dict(stats.rejected),
        "retries": dict(stats.retried_by_reason),
        "elapsed_s": round(elapsed, 3),
        "target_rps": target,
        "sent_rps": round(sent_rps, 1),
        "sent_vs_target": round(sent_rps / target, 3),
        "achieved_rps": round(stats.accepted / elapsed, 1),
        "latency_ms": {
            q: round(stats.percentile(p) * 1000, 2)
            for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telemetry-loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rps", type=float, default=2.0, help="readings per second per device")
    parser.add_argument("--base-url", default="http://localhost:8001")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run")
    parser.add_argument("--total", type=int, default=None, help="stop after this many readings")
    parser.add_argument("--batch", type=int, default=1, help="readings per request (/ingest/batch)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--anomaly-rate", type=float, default=0.0)
    parser.add_argument(
        "--metrics",
        type=parse_metrics,
        default=None,
        help="metric names and value ranges, e.g. temperature_c=15:35,humidity=30:70",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device-prefix", default="sim-")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight at most")
    parser.add_argument(
        "--json", dest="json_path", default=None, help="also write the summary here"
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress line")
    parser.add_argument(
        "--verify", action="store_true", help="afterwards, check every accepted reading was counted"
    )
    parser.add_argument("--dashboard-url", default="http://localhost:8002")
    parser.add_argument(
        "--read-key",
        default=None,
        help="for --verify when the dashboard requires keys: a key with the read scope",
    )
    parser.add_argument("--verify-timeout", type=float, default=120.0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.duration and not args.total:
        args.duration = 60.0
    devices = [f"{args.device_prefix}{i}" for i in range(args.devices)]
    baseline = (
        asyncio.run(baseline_counts(args.dashboard_url, devices, args.read_key))
        if args.verify
        else {}
    )
    stats = asyncio.run(run(args))
    result = summary(stats, args)
    if args.verify:
        result["verification"] = asyncio.run(
            verify(
                args.dashboard_url,
                stats.accepted_by_device,
                baseline,
                args.verify_timeout,
                args.read_key,
            )
        )
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    if sum(result["rejected"].values()) or not result.get("verification", {"ok": True})["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
