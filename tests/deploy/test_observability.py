"""Observability of the running services: their /metrics pass promtool, a real
Prometheus scrapes all four and counts what was ingested, the dashboard's and
the alert rules' queries run against it, and a request id follows one reading
through the API, Kafka and both workers' JSON logs."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml
from deploy.tooling import K8S, SERVICES, of_kind, rendered, run, tool
from telemetry_tools.servers import free_port
from telemetry_tools.stack import Service, Stack, default_services

pytestmark = [pytest.mark.e2e, pytest.mark.deploy]

T = TypeVar("T")


def wait_for(fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 60.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A free port can be taken by another process before Kafka binds it (other
    # suites run on this machine too): such a start is retried on new ports.
    for attempt in range(3):
        kafka, controller, mongo, *service_ports = distinct_free_ports(7)
        running = Stack(
            data_dir=Path(tmp_path_factory.mktemp("observed-stack")),
            kafka_port=kafka,
            controller_port=controller,
            mongo_port=mongo,
            services=[
                Service(s.name, s.module, port)
                for s, port in zip(default_services(), service_ports, strict=True)
            ],
            # DEBUG: each worker logs every record it committed, with its request id.
            extra_env={"LOG_LEVEL": "DEBUG"},
            echo_logs=False,
        )
        try:
            running.start()
        except (RuntimeError, TimeoutError) as exc:
            running.stop()
            if attempt == 2 or "Address already in use" not in str(exc):
                raise
            continue
        try:
            yield running
        finally:
            running.stop()
        return


def base_url(stack: Stack, service: str) -> str:
    port = next(s.port for s in stack.services if s.name == service)
    return f"http://127.0.0.1:{port}"


def post_readings(stack: Stack, count: int, device: str) -> None:
    """`count` accepted readings: singles and one batch, as devices send them."""
    ingest = base_url(stack, "ingestion-api")
    singles = count // 2
    for i in range(singles):
        reading = {"device_id": device, "temperature_c": 20.0 + i}
        assert requests.post(f"{ingest}/ingest", json=reading, timeout=10).status_code == 202
    batch = [{"device_id": device, "humidity": float(i)} for i in range(count - singles)]
    response = requests.post(f"{ingest}/ingest/batch", json=batch, timeout=10)
    assert response.status_code == 200 and response.json()["stored"] == len(batch)


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus (Debian's package) scraping the four services every second."""
    folder = Path(tmp_path_factory.mktemp("prometheus"))
    jobs = [
        {"job_name": name, "static_configs": [{"targets": [base_url(stack, name)[7:]]}]}
        for name in SERVICES
    ]
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_for(lambda: ready_status(url), lambda status: status == 200, timeout_s=60)
        assert ready == 200, (folder / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def ready_status(url: str) -> int:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code
    except requests.ConnectionError:
        return 0


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]["result"]


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_accepts_the_service_metrics(stack: Stack, service: str) -> None:
    post_readings(stack, 2, device="promtool-dev")
    exposition = requests.get(f"{base_url(stack, service)}/metrics", timeout=10).text
    result = run([tool("promtool"), "check", "metrics"], input=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and "# TYPE" in exposition


def test_prometheus_scrapes_all_four_and_counts_what_was_ingested(
    stack: Stack, prometheus: str
) -> None:
    def targets_up() -> dict[str, float]:
        return {r["metric"]["job"]: float(r["value"][1]) for r in query(prometheus, "up")}

    up = wait_for(targets_up, lambda jobs: jobs == dict.fromkeys(SERVICES, 1.0))
    assert up == dict.fromkeys(SERVICES, 1.0)

    accepted = 'sum(ingest_readings_total{job="ingestion-api",outcome="accepted"})'
    first = wait_for(lambda: scalar(prometheus, accepted), lambda value: value is not None)
    assert first is not None
    # What was counted before this test is the baseline, once two scrapes agree on it.
    time.sleep(2.5)
    baseline = scalar(prometheus, accepted)
    assert baseline is not None
    post_readings(stack, 25, device="prometheus-dev")
    counted = wait_for(
        lambda: scalar(prometheus, accepted), lambda value: value == baseline + 25, timeout_s=30
    )
    assert counted == baseline + 25

    consumed = 'sum by (job) (consumer_records_total{job=~".+-worker"})'
    workers = wait_for(
        lambda: {r["metric"]["job"]: float(r["value"][1]) for r in query(prometheus, consumed)},
        lambda by_job: all(v >= baseline + 25 for v in by_job.values()) and len(by_job) == 2,
    )
    assert set(workers) == {"aggregator-worker", "alerts-worker"}
    assert all(value >= baseline + 25 for value in workers.values())


def dashboard_queries() -> list[str]:
    dashboard = json.loads((K8S / "base/monitoring/dashboards/telemetry.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    rule = of_kind(rendered("prod"), "PrometheusRule")["telemetry"]
    return [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Names of the service metrics a query reads (by their telemetry-style prefixes)."""
    prefixes = r"(?:ingest|http|consumer|aggregator|alerts|process)_[a-z_]+"
    names = set(re.findall(rf"\b{prefixes}\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_every_dashboard_and_alert_query_runs_on_metrics_the_services_expose(
    stack: Stack, prometheus: str
) -> None:
    post_readings(stack, 2, device="dashboard-dev")
    exposed = set()
    for service in SERVICES:
        text = requests.get(f"{base_url(stack, service)}/metrics", timeout=10).text
        exposed |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exposed |= {f"{name}_total" for name in exposed}  # counters expose name and name_total
    queries = dashboard_queries() + rule_queries()
    assert len(queries) >= 20
    for expr in queries:
        missing = metric_names(expr) - exposed
        assert not missing, f"{expr} reads metrics no service exposes: {missing}"
        concrete = expr.replace("$__rate_interval", "1m").replace('"$job"', '".+"')
        query(prometheus, concrete)  # Prometheus parses and evaluates it, or the test fails


def log_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    text = (stack.data_dir / "logs" / f"{service}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_one_request_id_follows_a_reading_through_kafka_into_both_workers(stack: Stack) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    response = requests.post(
        f"{base_url(stack, 'ingestion-api')}/ingest",
        json={"device_id": "traced-dev", "temperature_c": 99.0},
        headers={"X-Request-ID": request_id},
        timeout=10,
    )
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == request_id
    event_id = response.json()["event_id"]

    def traced(service: str) -> list[dict[str, Any]]:
        return [line for line in log_lines(stack, service) if line.get("request_id") == request_id]

    # The stack copies each service's output to its log file from another thread.
    published = wait_for(lambda: traced("ingestion-api"), lambda found: len(found) >= 1)
    assert [(line["message"], line["event_id"]) for line in published] == [("published", event_id)]
    for worker in ("aggregator-worker", "alerts-worker"):
        lines = wait_for(lambda worker=worker: traced(worker), lambda found: len(found) >= 1)
        assert [(line["message"], line["event_id"]) for line in lines] == [("processed", event_id)]
        assert lines[0]["service"] == worker
        assert {"partition", "offset", "ts", "level"} <= set(lines[0])


def test_every_service_logs_only_json_lines(stack: Stack) -> None:
    for service in SERVICES:
        lines = log_lines(stack, service)  # json.loads fails on any other line
        assert lines and all(line["service"] == service for line in lines)
