"""The OpenAPI document people read: every parameter shows an example, every answer a schema."""

from __future__ import annotations

from dashboard_api.app import create_app
from telemetry_common.infra.settings import DashboardSettings

SPEC = create_app(DashboardSettings()).openapi()
OPERATIONS = [(path, op) for path, ops in SPEC["paths"].items() for op in ops.values()]


def test_every_parameter_has_an_example() -> None:
    missing = [
        (path, param["name"])
        for path, op in OPERATIONS
        for param in op.get("parameters", [])
        if not ({"example", "examples"} & (set(param) | set(param.get("schema", {}))))
    ]
    assert missing == []


def test_every_answer_and_refusal_shows_its_shape() -> None:
    missing = [
        (path, code)
        for path, op in OPERATIONS
        if path != "/metrics"  # Prometheus text
        for code, response in op["responses"].items()
        if code != "204"  # No Content: there is no body to show
        and not any(
            {"schema", "example"} & set(media)
            for media in response.get("content", {}).values()
            if media.get("schema") != {}  # FastAPI's placeholder for a streamed answer
        )
    ]
    assert missing == []


def test_listings_document_their_cursor() -> None:
    for path in ("/telemetry", "/aggregated", "/alerts", "/devices", "/v1/search"):
        params = {p["name"] for p in SPEC["paths"][path]["get"]["parameters"]}
        assert {"cursor", "limit"} <= params, path
    page = SPEC["components"]["schemas"]["ReadingsPage"]["properties"]
    assert {"data", "count", "next_cursor"} <= set(page)
