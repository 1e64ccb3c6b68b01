"""`telemetry-stack up`: Kafka, MongoDB and the four services, as `make up` runs them.

The same :class:`Stack` is what the end-to-end tests start, on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from telemetry_common.infra.kafka.topics import default_topics, ensure_topics

from telemetry_tools.servers import KafkaServer, MongoServer, port_open


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int


def default_services(base_port: int = 8001) -> list[Service]:
    return [
        Service("ingestion-api", "ingestion_api", base_port),
        Service("dashboard-api", "dashboard_api", base_port + 1),
        Service("aggregator-worker", "aggregator_worker", base_port + 2),
        Service("alerts-worker", "alerts_worker", base_port + 3),
    ]


COLOURS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m"]
RESET = "\033[0m"


@dataclass
class Stack:
    data_dir: Path
    kafka_port: int = 9092
    controller_port: int = 9093
    mongo_port: int = 27017
    services: list[Service] = field(default_factory=default_services)
    extra_env: dict[str, str] = field(default_factory=dict)
    echo_logs: bool = True

    def __post_init__(self) -> None:
        self.kafka = KafkaServer(self.data_dir / "kafka", self.kafka_port, self.controller_port)
        self.mongo = MongoServer(self.data_dir / "mongo", self.mongo_port)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._pumps: list[threading.Thread] = []

    def service_env(self, service: Service) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "MONGO_URL": self.mongo.url,
            "HOST": "127.0.0.1",
            "PORT": str(service.port),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def check_ports_free(self) -> None:
        taken = [
            f"{what} port {port}"
            for what, port in [
                ("Kafka", self.kafka_port),
                ("Kafka controller", self.controller_port),
                ("MongoDB", self.mongo_port),
                *((s.name, s.port) for s in self.services),
            ]
            if port_open(port)
        ]
        if taken:
            raise SystemExit(
                "already in use: " + ", ".join(taken) + ". Is another stack running? "
                "Stop it, or pick other ports (telemetry-stack up --help)."
            )

    def start_infrastructure(self) -> None:
        self.mongo.start()
        self.kafka.start()
        asyncio.run(ensure_topics(self.kafka.bootstrap_servers, default_topics()))

    def start_service(self, service: Service) -> None:
        log_path = self.data_dir / "logs" / f"{service.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", service.module],
            env=self.service_env(service),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes[service.name] = process
        colour = COLOURS[self.services.index(service) % len(COLOURS)]
        pump = threading.Thread(
            target=self._pump, args=(service.name, colour, process, log_path), daemon=True
        )
        pump.start()
        self._pumps.append(pump)

    def _pump(
        self, name: str, colour: str, process: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        assert process.stdout is not None
        # The pipe is closed here, at its end, not left to the garbage collector.
        with process.stdout, log_path.open("ab") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if self.echo_logs:
                    text = line.decode(errors="replace").rstrip()
                    print(f"{colour}{name:>17}{RESET} | {text}", flush=True)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.services)
        while pending and time.monotonic() < deadline:
            for service in list(pending):
                process = self.processes[service.name]
                if process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited with {process.returncode}")
                try:
                    ok = requests.get(f"http://127.0.0.1:{service.port}/health", timeout=1).ok
                except requests.RequestException:
                    ok = False
                if ok:
                    pending.remove(service)
            time.sleep(0.2)
        if pending:
            raise TimeoutError("not healthy in time: " + ", ".join(s.name for s in pending))

    def start(self) -> None:
        self.start_infrastructure()
        for service in self.services:
            self.start_service(service)
        self.wait_healthy()

    def stop_service(self, name: str, kill: bool = False) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        # Services first, so the APIs flush to Kafka and the workers commit,
        # then Kafka, then MongoDB.
        for name in list(self.processes):
            self.stop_service(name)
        self.kafka.stop()
        self.mongo.stop()


def _banner(stack: Stack) -> str:
    urls = {
        "ingestion API": f"http://localhost:{stack.services[0].port}  (docs: /docs)",
        "dashboard API": f"http://localhost:{stack.services[1].port}  (docs: /docs)",
        "aggregator": f"http://localhost:{stack.services[2].port}/metrics",
        "alerts": f"http://localhost:{stack.services[3].port}/metrics",
        "Kafka": stack.kafka.bootstrap_servers,
        "MongoDB": stack.mongo.url,
        "data": str(stack.data_dir),
    }
    width = max(len(k) for k in urls)
    lines = [f"  {k:<{width}}  {v}" for k, v in urls.items()]
    return "\nTelemetry stack is up:\n" + "\n".join(lines) + "\nCtrl-C stops everything.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="telemetry-stack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and follow the logs")
    up.add_argument("--data-dir", type=Path, default=Path(".local/data"))
    up.add_argument("--kafka-port", type=int, default=9092)
    up.add_argument("--mongo-port", type=int, default=27017)
    up.add_argument("--base-port", type=int, default=8001, help="first of the four service ports")
    args = parser.parse_args(argv)

    stack = Stack(
        data_dir=args.data_dir.resolve(),
        kafka_port=args.kafka_port,
        controller_port=args.kafka_port + 1,
        mongo_port=args.mongo_port,
        services=default_services(args.base_port),
    )
    stack.check_ports_free()
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    started = time.monotonic()
    try:
        print(
            f"starting MongoDB on {args.mongo_port} and Kafka on {args.kafka_port} ...", flush=True
        )
        stack.start_infrastructure()
        for service in stack.services:
            stack.start_service(service)
        stack.wait_healthy()
        print(_banner(stack) + f"(up in {time.monotonic() - started:.1f}s)", flush=True)
        while not stopping.wait(1.0):
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; stopping", flush=True)
                    stopping.set()
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()
