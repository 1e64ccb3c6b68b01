"""Everything a request needs, built once per app (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.api_keys import KeyCache
from telemetry_common.settings import IngestionSettings

from ingestion_api.dedupe import RecentEventIds
from ingestion_api.limits import RateLimiter
from ingestion_api.metrics import IngestMetrics
from ingestion_api.publish import ReadingPublisher


@dataclass
class IngestContext:
    settings: IngestionSettings
    publisher: ReadingPublisher
    # MongoDB holds the API keys; None when keys are neither required nor administered here.
    db: AsyncDatabase | None
    keys: KeyCache | None
    device_limits: RateLimiter
    key_limits: RateLimiter
    recent: RecentEventIds
    metrics: IngestMetrics
    registry: CollectorRegistry

    @property
    def max_future_skew(self) -> timedelta:
        return timedelta(seconds=self.settings.max_future_skew_s)


# Async on purpose: FastAPI runs a plain `def` dependency in a thread pool, a
# thread hand-off on every request.
async def get_context(request: Request) -> IngestContext:
    return request.app.state.ingest
