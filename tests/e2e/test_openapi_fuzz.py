"""Both APIs fuzzed from their own OpenAPI documents (schemathesis), as `make up` runs them
(no keys) and as docker-compose and Kubernetes run them (keys required): no input makes a
5xx, every answer is one the document describes (status, content type, body schema), and
with keys, an operation that declares a key refuses a request without one."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import schemathesis
from dashboard_api.app import create_app as create_dashboard
from e2e.helpers import url
from hypothesis import HealthCheck, given, settings
from ingestion_api.app import create_app as create_ingestion
from integration.served import serving
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance
from telemetry_common.infra.settings import DashboardSettings, IngestionSettings
from telemetry_tools.stack import Stack
from telemetry_tools.testing import eventually

pytestmark = pytest.mark.e2e

# Left out: positive_data_acceptance. The documents describe each body's shape, not
# every rule across its fields (a reading needs at least one numeric metric, a
# webhook an http(s) URL on a public address), so schema-valid bodies may get 422.
# Enough to reach every documented parameter and body field a few times, bounded so
# the run stays within minutes on 2 cores; derandomized, so CI sees the same cases.
FUZZ = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def fuzz(openapi_url: str, key: str | None = None) -> None:
    """Every operation of the document at ``openapi_url``, each with up to FUZZ's examples;
    with ``key`` as X-API-Key, or with none (keys off, so a declared key is not checked)."""
    headers = {"X-API-Key": key} if key else None
    excluded = [positive_data_acceptance] if key else [positive_data_acceptance, ignored_auth]
    schema = schemathesis.openapi.from_url(openapi_url)
    # Server-Sent Events never end by design: their own tests read them.
    operations = [
        operation
        for operation in (result.ok() for result in schema.get_all_operations())
        if not operation.path.endswith("/stream")
    ]
    assert operations
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(timeout=30, headers=headers, excluded_checks=excluded)

        answers_as_documented()


def test_ingestion_api_answers_every_input_as_documented(stack: Stack) -> None:
    fuzz(url(stack, "ingestion-api", "/openapi.json"))


def test_dashboard_api_answers_every_input_as_documented(stack: Stack) -> None:
    fuzz(url(stack, "dashboard-api", "/openapi.json"))


ADMIN_KEY = "admin-" + "f3Kq8Wz1Rt6Ym2Lp9Vx4Nc7B"


async def test_both_apis_answer_every_input_as_documented_with_keys_required(
    service_env: dict[str, Any],
) -> None:
    keys = {"api_keys_required": True, "admin_api_key": ADMIN_KEY, "api_keys_refresh_s": 0.2}
    dashboard = create_dashboard(DashboardSettings(**service_env, **keys))
    ingestion = create_ingestion(IngestionSettings(**service_env, **keys))
    async with (
        serving(dashboard) as dashboard_url,
        serving(ingestion) as ingestion_url,
        aiohttp.ClientSession() as http,
    ):

        async def healthy() -> bool:
            for base in (dashboard_url, ingestion_url):
                async with http.get(f"{base}/health") as answer:
                    if answer.status != 200:
                        return False
            return True

        # Connected to Kafka and MongoDB first: a 503 while starting is documented, but
        # would leave those operations barely fuzzed.
        await eventually(healthy)
        # The uvicorn servers run on this loop; schemathesis blocks, so it gets a thread.
        await asyncio.to_thread(fuzz, f"{ingestion_url}/openapi.json", ADMIN_KEY)
        await asyncio.to_thread(fuzz, f"{dashboard_url}/openapi.json", ADMIN_KEY)
