"""The ingestion API in the test's process, connected to the session's real Kafka."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from ingestion_api.app import create_app
from telemetry_common.infra.settings import IngestionSettings


@contextmanager
def ingestion_client(
    settings: IngestionSettings, wait_healthy: bool = True
) -> Iterator[TestClient]:
    """A client of the app, its lifespan run; by default once it is connected to Kafka."""
    with TestClient(create_app(settings)) as client:
        if wait_healthy:
            deadline = time.monotonic() + 30
            while client.get("/health").status_code != 200:
                if time.monotonic() > deadline:
                    raise AssertionError("ingestion API never connected to Kafka")
                time.sleep(0.1)
        yield client
