"""The README's examples through all four services, started exactly as `make up` starts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from e2e.helpers import url, wait_for
from telemetry_tools.stack import Stack

pytestmark = pytest.mark.e2e


def test_readme_examples_produce_aggregates_alerts_devices_and_stats(stack: Stack) -> None:
    ingest = url(stack, "ingestion-api", "/ingest")
    posted = requests.post(
        ingest,
        headers={"Content-Type": "application/json"},
        data='{"device_id": "dev-1", "temperature_c": 25.5, "humidity": 60.0}',
        timeout=10,
    )
    assert posted.status_code == 202
    assert posted.json()["status"] == "queued"
    hot = requests.post(ingest, json={"device_id": "dev-1", "temperature_c": 61.0}, timeout=10)
    assert hot.status_code == 202

    def aggregates() -> list[dict]:
        return requests.get(
            url(stack, "dashboard-api", "/devices/dev-1/aggregates"), timeout=10
        ).json()["data"]

    rollups = wait_for(
        aggregates,
        lambda data: sum(r["count"] for r in data if r["sensor_type"] == "temperature_c") == 2,
    )
    temperature = [r for r in rollups if r["sensor_type"] == "temperature_c"]
    assert sum(r["count"] for r in temperature) == 2
    assert min(r["min"] for r in temperature) == 25.5
    assert max(r["max"] for r in temperature) == 61.0
    assert all(r["timestamp"].endswith("Z") for r in rollups)
    humidity = [r for r in rollups if r["sensor_type"] == "humidity"]
    assert [(r["count"], r["average"]) for r in humidity] == [(1, 60.0)]

    def recent_alerts() -> list[dict]:
        return requests.get(url(stack, "dashboard-api", "/alerts/recent"), timeout=10).json()[
            "data"
        ]

    alerts = wait_for(recent_alerts, lambda data: len(data) >= 1)
    assert len(alerts) == 1
    assert alerts[0]["device_id"] == "dev-1"
    # Named as the reading named the metric (the flat form's temperature_c).
    assert (alerts[0]["sensor_type"], alerts[0]["alert_type"]) == (
        "temperature_c",
        "temperature_c_high",
    )
    assert alerts[0]["severity"] == "critical"  # 61 is more than 20% past 50
    assert alerts[0]["status"] == "active"
    # One of the built-in rules (the environment's thresholds) raised it.
    assert (alerts[0]["rule_id"], alerts[0]["acknowledged_at"]) == ("temperature_high", None)
    builtin = requests.get(
        url(stack, "dashboard-api", "/alerts/rules?builtin=true"), timeout=10
    ).json()["data"]
    assert {r["rule_id"]: r["threshold"] for r in builtin} == {
        "temperature_high": 50.0,
        "temperature_low": -10.0,
        "humidity_high": 100.0,
        "humidity_low": 0.0,
    }
    acked = requests.post(
        url(stack, "dashboard-api", f"/alerts/{alerts[0]['alert_id']}/ack"), timeout=10
    )
    assert acked.status_code == 200
    assert acked.json()["acknowledged_by"] == "anonymous"  # `make up` requires no keys

    devices = requests.get(url(stack, "dashboard-api", "/devices"), timeout=10).json()["data"]
    assert [d["device_id"] for d in devices] == ["dev-1"]
    assert devices[0]["reading_count"] == 2
    assert devices[0]["last_values"]["temperature_c"] == 61.0

    def stats_now() -> dict:
        return requests.get(url(stack, "dashboard-api", "/stats"), timeout=10).json()

    # /stats serves a snapshot refreshed every few seconds: wait for one that has both.
    stats = wait_for(stats_now, lambda s: s["total_readings"] == 2 and s["active_alerts"] == 1)
    assert stats["total_readings"] == 2
    assert stats["total_devices"] == 1
    assert stats["total_alerts"] == 1
    assert stats["active_alerts"] == 1


def test_readme_alert_rule_examples(stack: Stack) -> None:
    rules = url(stack, "dashboard-api", "/alerts/rules")
    created = requests.post(
        rules,
        json={
            "name": "Room 101 too hot", "metric": "temperature_c", "operator": ">",
            "threshold": 30, "severity": "critical", "scope": "tag", "tag": "room:101",
            "k": 3, "n": 5, "for": "1m", "cooldown": "10m", "clear_threshold": 28,
        },
        timeout=10,
    )  # fmt: skip
    assert created.status_code == 201
    rule_id = created.json()["rule_id"]
    disabled = requests.patch(f"{rules}/{rule_id}", json={"enabled": False}, timeout=10)
    assert disabled.json()["enabled"] is False
    shorthand = requests.post(
        url(stack, "dashboard-api", "/v1/alerts"),
        json={"device_id": "dev-9", "metric": "temperature_c", "op": ">", "threshold": 30},
        timeout=10,
    )
    assert shorthand.status_code == 201
    assert shorthand.json()["devices"] == ["dev-9"]
    silence = requests.post(
        url(stack, "dashboard-api", "/alerts/silences"),
        json={"device_id": "dev-9", "until": "2999-01-15T12:00:00Z", "comment": "maintenance"},
        timeout=10,
    )
    assert silence.status_code == 201
    bad = requests.post(rules, json={"name": "x", "metric": "t", "operator": ">",
                                     "threshold": 1, "k": 3, "n": 2}, timeout=10)  # fmt: skip
    assert bad.status_code == 422
    assert bad.json()["errors"] == [{"field": "k", "reason": "must be at most n (2)"}]


def test_every_service_serves_health_and_prometheus_metrics(stack: Stack) -> None:
    for service in stack.services:
        health = requests.get(url(stack, service.name, "/health"), timeout=10)
        assert health.status_code == 200, service.name
        metrics = requests.get(url(stack, service.name, "/metrics"), timeout=10)
        assert metrics.status_code == 200, service.name
        assert metrics.headers["Content-Type"].startswith("text/plain")
        assert "process_cpu_seconds_total" in metrics.text, service.name


def test_bad_reading_gets_a_clear_4xx_naming_the_field(stack: Stack) -> None:
    response = requests.post(
        url(stack, "ingestion-api", "/ingest"),
        json={"device_id": {"$ne": None}, "temperature_c": 1},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "device_id", "reason": "must be a string"}]


def test_load_generator_readings_are_all_counted(stack: Stack, tmp_path: Path) -> None:
    from telemetry_tools import loadgen

    summary_path = tmp_path / "summary.json"
    loadgen.main(
        [
            "--base-url", url(stack, "ingestion-api", ""),
            "--devices", "4", "--rps", "20", "--total", "60", "--batch", "3",
            "--seed", "7", "--device-prefix", "lg-", "--quiet", "--json", str(summary_path),
            "--verify", "--verify-timeout", "60",
            "--dashboard-url", url(stack, "dashboard-api", ""),
        ]
    )  # fmt: skip

    summary = json.loads(summary_path.read_text())
    assert summary["sent"] == 60 and summary["accepted"] == 60 and summary["rejected"] == {}
    assert summary["verification"]["ok"] is True
    assert summary["verification"]["counted"] == 60

    def counted() -> int:
        devices = requests.get(url(stack, "dashboard-api", "/devices"), timeout=10).json()["data"]
        return sum(d["reading_count"] for d in devices if d["device_id"].startswith("lg-"))

    assert wait_for(counted, lambda n: n >= 60) == 60


def test_readme_organization_and_project_examples(stack: Stack) -> None:
    orgs = url(stack, "dashboard-api", "/orgs")
    org = requests.post(orgs, json={"name": "Acme Facilities"}, timeout=10)
    assert org.status_code == 201
    org_id = org.json()["org_id"]
    projects = f"{orgs}/{org_id}/projects"
    project = requests.post(projects, json={"name": "Warehouse sensors"}, timeout=10)
    assert project.status_code == 201
    listed = requests.get(projects, timeout=10).json()["data"]
    assert [(p["project_id"], p["name"]) for p in listed] == [
        (project.json()["project_id"], "Warehouse sensors")
    ]
    assert org_id in [o["org_id"] for o in requests.get(orgs, timeout=10).json()["data"]]
