"""The Grafana dashboard (k8s/base/monitoring/dashboards) shows what operators need."""

from __future__ import annotations

import json
from typing import Any

import pytest
from deploy.tooling import K8S

pytestmark = pytest.mark.deploy

DASHBOARD = K8S / "base" / "monitoring" / "dashboards" / "telemetry.json"


@pytest.fixture(scope="module")
def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def exprs(panel: dict[str, Any]) -> str:
    return "\n".join(target["expr"] for target in panel["targets"])


@pytest.mark.parametrize(
    ("title_part", "metric"),
    [
        ("Ingest rate", 'ingest_readings_total{outcome="accepted"}'),
        ("Rejects", 'outcome!="accepted"'),
        ("End-to-end latency", "consumer_end_to_end_latency_seconds_bucket"),
        ("Per-stage latency", "consumer_batch_duration_seconds_bucket"),
        ("Consumer lag", "consumer_lag_records"),
        ("Dead-letter rate", "consumer_records_dead_lettered_total"),
        ("Alerts", "alerts_fired_total"),
        ("MongoDB write latency", "aggregator_write_duration_seconds_bucket"),
        ("CPU", "process_cpu_seconds_total"),
        ("Memory", "process_resident_memory_bytes"),
    ],
)
def test_the_dashboard_has_a_panel_for(
    panels: list[dict[str, Any]], title_part: str, metric: str
) -> None:
    matching = [p for p in panels if title_part in p["title"]]
    assert len(matching) == 1, [p["title"] for p in panels]
    assert metric in exprs(matching[0])


def test_panels_read_the_chosen_data_source_and_do_not_overlap(
    panels: list[dict[str, Any]],
) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        assert grid["x"] + grid["w"] <= 24
        cells |= area
