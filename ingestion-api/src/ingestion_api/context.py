"""Everything a request needs, built once per app (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import Request
from telemetry_common.http.api_keys import KeyCache
from telemetry_common.infra.mongo import Database
from telemetry_common.infra.settings import IngestionSettings
from telemetry_common.infra.tenancy import ProjectQuotas

from ingestion_api.dedupe import RecentEventIds
from ingestion_api.limits import DeviceTurns, RateLimiter, ReadingQuotas
from ingestion_api.metrics import IngestMetrics
from ingestion_api.publish import ReadingPublisher


@dataclass
class IngestContext:
    settings: IngestionSettings
    publisher: ReadingPublisher
    # MongoDB holds the API keys; None when keys are neither required nor administered here.
    db: Database | None
    keys: KeyCache | None
    # Each project's readings/s quota, from MongoDB like the keys (None: no MongoDB here).
    quotas: ProjectQuotas | None
    reading_quotas: ReadingQuotas
    device_limits: RateLimiter
    device_turns: DeviceTurns
    key_limits: RateLimiter
    recent: RecentEventIds
    metrics: IngestMetrics
    # Read on every reading: built once, not per call.
    max_future_skew: timedelta = field(init=False)

    def __post_init__(self) -> None:
        self.max_future_skew = timedelta(seconds=self.settings.max_future_skew_s)


# Async on purpose: FastAPI runs a plain `def` dependency in a thread pool, a
# thread hand-off on every request.
async def get_context(request: Request) -> IngestContext:
    context: IngestContext = request.app.state.ingest
    return context
