"""Real Kafka (KRaft, official jars) and a MongoDB wire server, started as child processes.

`make up` and the test suite start the same servers through this module; what
``make install`` fetched is found through TELEMETRY_KAFKA_LIBS and
TELEMETRY_SECANTUSD (the Makefile exports both), or under the repository's .local/.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[3]
KAFKA_CONFIG_DIR = REPO_ROOT / "tools" / "kafka"


def pom_property(name: str) -> str:
    text = (KAFKA_CONFIG_DIR / "pom.xml").read_text()
    return text.split(f"<{name}>", 1)[1].split(f"</{name}>", 1)[0]


def kafka_libs() -> Path:
    override = os.environ.get("TELEMETRY_KAFKA_LIBS")
    libs = (
        Path(override)
        if override
        else REPO_ROOT / ".local" / "kafka" / pom_property("kafka.version") / "libs"
    )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise FileNotFoundError(f"no Kafka jars in {libs}; run `make install`")
    return libs


def secantusd() -> Path:
    override = os.environ.get("TELEMETRY_SECANTUSD")
    if override:
        path = Path(override)
    else:
        found = sorted((REPO_ROOT / ".local" / "secantus").glob("*/bin/secantusd-rs"))
        path = found[-1] if found else REPO_ROOT / ".local" / "secantus" / "missing"
    if not path.exists():
        raise FileNotFoundError(f"no secantusd-rs at {path}; run `make install`")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for_line(
    log_path: Path, needle: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail}")
        if log_path.exists() and needle in log_path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"no {needle!r} in {log_path} after {timeout_s}s")


class _ChildServer:
    process: subprocess.Popen[bytes] | None = None
    log_path: Path
    name: str

    def _spawn(self, argv: list[str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = self.log_path.open("ab")
        # A session of its own: Ctrl-C in the terminal reaches the stack runner,
        # which then stops servers in order (services, Kafka, MongoDB).
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in time."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to everyone else."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()


class KafkaServer(_ChildServer):
    """A single-node Kafka broker and controller in KRaft mode."""

    name = "kafka"

    def __init__(self, data_dir: Path, port: int, controller_port: int, heap: str = "768m"):
        self.data_dir = data_dir
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.log_path = data_dir / "kafka.log"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> str:
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data_dir / 'logs'}",
                "num.partitions=6",
                # The project creates its topics; a typo must not create a new one.
                "auto.create.topics.enable=false",
                # One broker: internal topics cannot ask for three replicas.
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # Consumers join at once instead of waiting 3 s for more members.
                "group.initial.rebalance.delay.ms=0",
                "",
            ]
        )

    def start(self, timeout_s: float = 90.0) -> None:
        libs = kafka_libs()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(self._properties())
        java = shutil.which("java") or "java"
        classpath = f"{libs}/*"
        jvm = [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_CONFIG_DIR / 'log4j2.properties'}",
            "-cp",
            classpath,
        ]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                # --cluster-id=: a URL-safe base64 id may start with "-", which as a
                # separate argument would be read as an option (1 start in 64 failed).
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(config),
                ],
                check=True,
                capture_output=True,
            )
        self.log_path.unlink(missing_ok=True)
        self._spawn([*jvm, "kafka.Kafka", str(config)])
        assert self.process is not None
        _wait_for_line(self.log_path, "Kafka Server started", self.process, timeout_s)


class MongoServer(_ChildServer):
    """SecantusDB's secantusd-rs: the MongoDB wire protocol over WiredTiger, one node."""

    name = "mongodb"

    def __init__(self, data_dir: Path, port: int, cache_size: str = "512M"):
        self.data_dir = data_dir
        self.port = port
        self.cache_size = cache_size
        self.log_path = data_dir / "secantusd.log"

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        self._spawn(
            [
                str(secantusd()),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.data_dir / "db"),
                "--cache-size",
                self.cache_size,
                # WiredTiger allocates each log file in full; 32MB keeps an empty store small.
                "--log-file-max",
                "32MB",
                "--log-level",
                "WARNING",
            ]
        )
        assert self.process is not None
        _wait_for_line(self.log_path, "listening on", self.process, timeout_s)
