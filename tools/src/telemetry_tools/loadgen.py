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
from telemetry_common.domain.alert_rules import duration_seconds
from telemetry_common.domain.timefmt import iso_z

from telemetry_tools.percentiles import percentile

SETTLE_S = 2.0
# Enough to ride out an API restart (a few seconds) or a Kafka restart (503s).
MAX_ATTEMPTS = 30
DEFAULT_METRICS = {"temperature_c": (15.0, 35.0), "humidity": (30.0, 70.0)}
# Values that breach the default thresholds (temperature 50, humidity 100).
ANOMALIES = {"temperature_c": (55.0, 80.0), "humidity": (101.0, 130.0)}


@dataclass
class Spike:
    device_id: str
    event_id: str
    metric: str
    value: float


@dataclass
class Silence:
    """A device that stopped sending: from after its last reading until it resumed."""

    device_id: str
    # Monotonic seconds into the run; resumed None: silent until the end.
    began_s: float
    resumed_s: float | None = None


@dataclass
class Injected:
    """What the run put into otherwise normal traffic, for --verify to look for."""

    spikes: list[Spike] = field(default_factory=list)
    silences: dict[str, Silence] = field(default_factory=dict)


def spike_value(low: float, high: float, deviations: float, rng: random.Random) -> float:
    """A value ``deviations`` standard deviations of the normal band (uniform in
    [low, high]: its deviation is the width over the square root of 12) above or
    below its middle: unusual for any device sending that band."""
    sigma = (high - low) / 12**0.5
    return round((low + high) / 2 + rng.choice((-1, 1)) * deviations * sigma, 3)


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
    injected: Injected = field(default_factory=lambda: Injected())

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

    silent = set(devices[: args.silent_devices])
    silence_from = args.silence_at if args.silence_at is not None else (args.duration or 60) / 3
    silence_until = None if args.silence_for is None else silence_from + args.silence_for
    # Each spiking device spikes once, on one of its readings after its baseline warmed.
    spike_metric, (spike_low, spike_high) = next(iter(metrics.items()))
    # Among the devices that keep sending, so that every spike is sent.
    talking = devices[args.silent_devices :] or devices
    spiking = {
        device: args.spike_after + rng.randrange(20)
        for device in rng.sample(talking, min(args.spikes, len(talking)))
    }
    injected = stats.injected

    def quiet(device: str, at_s: float) -> bool:
        """Whether the device is in its silence at ``at_s`` (seconds into the run)."""
        if device not in silent or at_s < silence_from:
            return False
        if silence_until is not None and at_s >= silence_until:
            if device in injected.silences:
                injected.silences[device].resumed_s = at_s
            return False
        injected.silences.setdefault(device, Silence(device, at_s))
        return True

    def with_spike(device: str, sent: int, reading: dict[str, Any]) -> dict[str, Any]:
        if spiking.get(device) == sent:
            value = spike_value(spike_low, spike_high, args.spike_size, rng)
            reading[spike_metric] = value
            injected.spikes.append(Spike(device, reading["event_id"], spike_metric, value))
        return reading

    async def device_loop(index: int, device: str, client: aiohttp.ClientSession) -> None:
        interval = args.batch / args.rps
        n = 0
        readings_sent = 0
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
            if quiet(device, target - started):
                continue
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
                    with_spike(
                        device,
                        readings_sent + i,
                        make_reading(
                            device,
                            rng,
                            metrics,
                            args.anomaly_rate,
                            now - timedelta(seconds=(size - 1 - i) / args.rps),
                        ),
                    )
                    for i in range(size)
                ]
                coro = post(client, "/ingest/batch", body, stats, size)
            else:
                body = with_spike(
                    device, readings_sent, make_reading(device, rng, metrics, args.anomaly_rate)
                )
                coro = post(client, "/ingest", body, stats, 1)
            readings_sent += size
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


async def all_pages(
    client: aiohttp.ClientSession, path: str, params: dict[str, str]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with client.get(path, params=query) as response:
            if response.status != 200:
                raise SystemExit(f"GET {path}: {response.status} {await response.text()}")
            page = await response.json()
        items.extend(page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return items


# A silence is flagged within its rule's `for` and a tick; this much more is allowed.
OFFLINE_SLACK_S = 5.0


def covers(rule: dict[str, Any], device_id: str) -> bool:
    """Whether a rule (as the API serves it) watches the device; a tag scope cannot be
    told from here (the run's readings carry no tags), so it is taken as not."""
    if rule["scope"] == "devices":
        return device_id in (rule["devices"] or ())
    return bool(rule["scope"] == "all")


async def verify_alerts(
    dashboard_url: str,
    injected: Injected,
    devices: list[str],
    run: tuple[datetime, float],
    timeout_s: float,
    read_key: str | None = None,
) -> dict[str, Any]:
    """Ask the dashboard whether each spike raised an anomaly alert on its own reading,
    each silence long enough for an absent rule raised a device_offline alert, and no
    device that kept reporting was flagged offline.

    ``run``: when it began (wall clock) and how long it lasted (seconds). What no
    enabled rule of the project watches is reported as not checked.
    """
    began, lasted_s = run
    ended = began + timedelta(seconds=lasted_s)
    async with dashboard_session(dashboard_url, read_key) as client:
        rules = await all_pages(client, "/alerts/rules", {"enabled": "true"})
        spikes = [
            s
            for s in injected.spikes
            if any(r["kind"] == "anomaly" and r["metric"] == s.metric and covers(r, s.device_id)
                   for r in rules)
        ]  # fmt: skip
        silences = []
        for silence in injected.silences.values():
            allowed = [
                duration_seconds(r["for"])
                for r in rules
                if r["kind"] == "absent" and r["metric"] is None and covers(r, silence.device_id)
            ]
            until = lasted_s if silence.resumed_s is None else silence.resumed_s
            if allowed and until - silence.began_s >= min(allowed) + OFFLINE_SLACK_S:
                silences.append(silence)
        ours = set(devices)
        deadline = time.monotonic() + timeout_s
        while True:
            alerts = await all_pages(client, "/alerts", {"from": iso_z(began)})
            anomalies = {
                a["alert_id"].rpartition(":")[0]
                for a in alerts
                if a["alert_type"].endswith("_anomaly")
            }
            offline = [a for a in alerts if a["alert_type"] == "device_offline"]
            missed_spikes = [s for s in spikes if s.event_id not in anomalies]
            flagged = {a["device_id"] for a in offline}
            unflagged = [s for s in silences if s.device_id not in flagged]
            if (not missed_spikes and not unflagged) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    # Flagged while the run still sent its readings (once it ended, every device is silent).
    flagged_wrongly = sorted(
        {
            a["device_id"]
            for a in offline
            if a["device_id"] in ours
            and a["device_id"] not in injected.silences
            and datetime.fromisoformat(a["fired_at"]) < ended
        }
    )
    return {
        "ok": not missed_spikes and not unflagged and not flagged_wrongly,
        "spikes": len(injected.spikes),
        "spikes_checked": len(spikes),
        "spikes_missed": [s.device_id for s in missed_spikes],
        "silences": len(injected.silences),
        "silences_checked": len(silences),
        "silences_unflagged": [s.device_id for s in unflagged],
        "flagged_offline_while_reporting": flagged_wrongly,
        "not_checked": [
            what
            for what, skipped in (
                ("spikes: no enabled anomaly rule on their metric", injected.spikes and not spikes),
                (
                    "silences: no enabled absent rule (on any reading) covering them, or too short",
                    injected.silences and not silences,
                ),
            )
            if skipped
        ],
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
    parser.add_argument(
        "--silent-devices",
        type=int,
        default=0,
        help="this many devices (the first ones) stop sending for a while",
    )
    parser.add_argument(
        "--silence-at",
        type=float,
        default=None,
        help="seconds into the run their silence begins (default: a third of --duration)",
    )
    parser.add_argument(
        "--silence-for", type=float, default=None, help="seconds it lasts (default: to the end)"
    )
    parser.add_argument(
        "--spikes",
        type=int,
        default=0,
        help="this many devices each send one value far outside their band (the first metric)",
    )
    parser.add_argument(
        "--spike-size",
        type=float,
        default=6.0,
        help="how far, in standard deviations of the metric's band",
    )
    parser.add_argument(
        "--spike-after",
        type=int,
        default=40,
        help="a device spikes after this many readings (and 20 more at most), once its "
        "baseline has warmed",
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
    began = datetime.now(UTC)
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
        if stats.injected.spikes or stats.injected.silences:
            result["alert_verification"] = asyncio.run(
                verify_alerts(
                    args.dashboard_url,
                    stats.injected,
                    devices,
                    (began, stats.send_elapsed_s),
                    args.verify_timeout,
                    args.read_key,
                )
            )
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    verdicts = [result.get(k, {"ok": True})["ok"] for k in ("verification", "alert_verification")]
    if sum(result["rejected"].values()) or not all(verdicts):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
