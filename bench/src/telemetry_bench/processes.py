"""The servers and service processes a benchmark run measures, and their resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pymongo import AsyncMongoClient
from telemetry_common.http.api_keys import issue_key
from telemetry_common.infra.mongo import Client
from telemetry_tools.servers import KafkaServer, MongoServer, free_port

STORE_LAYOUT = "v3"


@dataclass
class Infra:
    """Where Kafka and MongoDB are: started by the run, or already running (--bootstrap-servers)."""

    bootstrap_servers: str
    mongo_url: str
    work_dir: Path
    # The database the workers drain into and the queries run on. On the bench's
    # own MongoDB it is kept between runs, so the large store is filled once.
    store_db: str
    store_kept: bool


@contextmanager
def infrastructure(
    work_dir: Path,
    store_dir: Path,
    run_id: str,
    bootstrap_servers: str | None,
    mongo_url: str | None,
) -> Iterator[Infra]:
    """Kafka in ``work_dir`` (thrown away); MongoDB in ``store_dir`` (kept), unless given."""
    started: list[KafkaServer | MongoServer] = []
    store_kept = mongo_url is None
    try:
        if mongo_url is None:
            mongo = MongoServer(store_dir / "mongo", free_port(), cache_size="1G")
            mongo.start()
            started.append(mongo)
            mongo_url = mongo.url
        if bootstrap_servers is None:
            kafka = KafkaServer(work_dir / "kafka", free_port(), free_port(), heap="1g")
            kafka.start()
            started.append(kafka)
            bootstrap_servers = kafka.bootstrap_servers
        # Named for the storage layout it holds: a store kept from an older layout
        # is left alone (make clean deletes it) and a new one is filled once.
        store_db = f"bench_store_{STORE_LAYOUT}" if store_kept else f"bench_store_{run_id}"
        yield Infra(bootstrap_servers, mongo_url, work_dir, store_db, store_kept)
    finally:
        for server in reversed(started):
            server.stop()


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


@dataclass
class ServiceProcess:
    """One service run as `python -m <module>`, exactly as `make up` runs it."""

    name: str
    module: str
    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    peak_rss_bytes: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            **self.env,
        }
        with (self.log_dir / f"{self.name}-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy within {timeout_s}s")

    def sample_rss(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes(self.process.pid))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def running(*services: ServiceProcess) -> Iterator[list[ServiceProcess]]:
    """Start the services, sample their resident memory while they run, stop them after."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            for service in services:
                service.sample_rss()

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        for service in services:
            service.start()
        sampler.start()
        yield list(services)
    finally:
        stop.set()
        for service in services:
            service.sample_rss()
            service.stop()


# The admin key of the bench's keyed services; nothing outside the run sees them.
BENCH_ADMIN_KEY = "admin-bench-" + "k3Jd8Qw2Zr5Tn9Lx"
BENCH_PROJECT = "prj-bench"


def keys_required(mongo_url: str, db_name: str) -> dict[str, str]:
    """The environment of a service that requires keys, reading them from ``db_name``."""
    return {
        "API_KEYS_REQUIRED": "true",
        "ADMIN_API_KEY": BENCH_ADMIN_KEY,
        "MONGO_URL": mongo_url,
        "MONGO_DB": db_name,
    }


async def issue_bench_key(
    mongo_url: str, db_name: str, scopes: list[str], project_id: str = BENCH_PROJECT
) -> str:
    """A key of ``project_id`` with ``scopes``, issued in ``db_name``."""
    client: Client = AsyncMongoClient(mongo_url)
    try:
        key, _ = await issue_key(client[db_name], "bench", project_id=project_id, scopes=scopes)
        return key
    finally:
        await client.close()


def wait_until_keys_loaded(
    url: str, path: str, key: str, json: object = None, timeout_s: float = 60.0
) -> None:
    """Until the service answers ``key`` with anything but 503 (keys not loaded yet) or
    401 (loaded before this key was issued): a GET of ``path``, a POST of ``json``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = requests.request(
            "GET" if json is None else "POST",
            f"{url}{path}",
            json=json,
            headers={"X-API-Key": key},
            timeout=10,
        )
        if answer.status_code not in (401, 503):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never loaded the bench's key: {answer.status_code}")
        time.sleep(0.2)
