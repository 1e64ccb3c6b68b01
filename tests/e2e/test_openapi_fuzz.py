"""Both APIs fuzzed from their own OpenAPI documents (schemathesis), as `make up` runs them:
no input makes a 5xx, and every answer is one the document describes (status, content
type, body schema)."""

from __future__ import annotations

import pytest
import schemathesis
from e2e.helpers import url
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from telemetry_tools.stack import Stack

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


def fuzz(openapi_url: str) -> None:
    """Every operation of the document at ``openapi_url``, each with up to FUZZ's examples."""
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
            case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])

        answers_as_documented()


def test_ingestion_api_answers_every_input_as_documented(stack: Stack) -> None:
    fuzz(url(stack, "ingestion-api", "/openapi.json"))


def test_dashboard_api_answers_every_input_as_documented(stack: Stack) -> None:
    fuzz(url(stack, "dashboard-api", "/openapi.json"))
