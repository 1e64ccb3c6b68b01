"""The ingestion API's own metrics (request latency comes from the shared middleware)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from telemetry_common.infra.metrics import Instruments


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry):
        on = Instruments(registry)
        self.readings = on.counter(
            "ingest_readings_total",
            "Readings received, by outcome: accepted, duplicate, invalid, unauthorised, "
            "forbidden, rate_limited, over_quota, kafka_unavailable, producer_saturated",
            ["outcome"],
        )
        self.refused = on.counter(
            "ingest_refused_requests_total",
            "Requests refused before publishing, by status and reason",
            ["status", "reason"],
        )
        self.project_readings = on.counter(
            "ingest_project_readings_total",
            "Readings by project: accepted (within its quotas), over_quota (over its readings/s "
            "quota) or over_device_quota (from devices past its device quota), refused with 429",
            ["project", "outcome"],
        )
        self._readings_by_outcome: dict[str, Any] = {}
        self._readings_by_project: dict[tuple[str, str], Any] = {}

    def count_project(self, project_id: str, outcome: str, readings: int) -> None:
        child = self._readings_by_project.get((project_id, outcome))
        if child is None:
            child = self._readings_by_project[(project_id, outcome)] = self.project_readings.labels(
                project_id, outcome
            )
        child.inc(readings)

    def count_readings(self, outcome: str, readings: int = 1) -> None:
        # The child per outcome is kept: labels() locks and builds a key, per request.
        child = self._readings_by_outcome.get(outcome)
        if child is None:
            child = self._readings_by_outcome[outcome] = self.readings.labels(outcome)
        child.inc(readings)
