"""Structured logs and the request id that ties a reading's log lines together."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from fastapi.testclient import TestClient
from telemetry_common.http.request_id import add_request_id, kafka_headers, log_filter
from telemetry_common.infra.kafka.dlq import HEADER_SOURCE_OFFSET, dlq_headers
from telemetry_common.infra.kafka.readings import request_id_of
from telemetry_common.infra.logs import JsonFormatter


def format_line(**extra: object) -> dict[str, object]:
    logger = logging.getLogger("telemetry.test")
    record = logger.makeRecord(
        "telemetry.test", logging.INFO, __file__, 1, "hello %s", ("you",), None, extra=extra
    )
    return json.loads(JsonFormatter("aggregator-worker").format(record))


def test_a_log_line_is_one_json_object_with_the_fields_and_extras() -> None:
    line = format_line(partition=3, offset=42)
    assert line["message"] == "hello you"
    assert line["service"] == "aggregator-worker"
    assert line["level"] == "INFO"
    assert line["logger"] == "telemetry.test"
    # As every timestamp the platform writes: ISO 8601 UTC with milliseconds and Z.
    assert len(str(line["ts"])) == 24 and str(line["ts"]).endswith("Z")
    assert (line["partition"], line["offset"]) == (3, 42)
    # Outside a request there is no id, in the line or for Kafka.
    assert "request_id" not in line
    assert kafka_headers() == []


def test_a_logged_exception_keeps_its_stack_trace() -> None:
    logger = logging.getLogger("telemetry.test")
    try:
        raise KeyError("q-1")
    except KeyError:
        record = logger.makeRecord(
            "telemetry.test", logging.ERROR, __file__, 1, "batch failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter("alerts-worker").format(record))
    assert line["message"] == "batch failed" and line["level"] == "ERROR"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "KeyError: 'q-1'" in line["exception"]


def test_the_request_id_is_read_back_from_the_kafka_headers() -> None:
    assert request_id_of([("other", b"x"), ("request_id", b"abc")]) == "abc"
    assert request_id_of(None) is None


class Lines(logging.Handler):
    """The JSON lines a logger wrote, as a service's log would have them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("ingestion-api"))
        # As the APIs configure logging (configure_logging's filters).
        self.addFilter(log_filter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


SERVED = logging.getLogger("telemetry.test.served")


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    SERVED.addHandler(handler)
    SERVED.setLevel(logging.INFO)
    yield handler
    SERVED.removeHandler(handler)


def app_logging_a_line() -> TestClient:
    """An app whose one route logs a line and says what it would send to Kafka."""
    app = FastAPI()

    @app.get("/id")
    async def served() -> dict[str, str]:
        SERVED.info("serving")
        return {key: value.decode() for key, value in kafka_headers()}

    add_request_id(app)
    return TestClient(app)


def test_the_client_request_id_is_answered_logged_and_sent_to_kafka(lines: Lines) -> None:
    response = app_logging_a_line().get("/id", headers={"X-Request-ID": "device-7:retry.2"})
    assert response.headers["x-request-id"] == "device-7:retry.2"
    assert response.json() == {"request_id": "device-7:retry.2"}
    assert [line["request_id"] for line in lines.lines] == ["device-7:retry.2"]


def test_a_missing_or_unsafe_request_id_is_replaced_by_a_fresh_one(lines: Lines) -> None:
    client = app_logging_a_line()
    fresh = client.get("/id")
    unsafe = client.get("/id", headers={"X-Request-ID": 'x"\n{"level": "ERROR"}'})
    too_long = client.get("/id", headers={"X-Request-ID": "a" * 129})
    answers = [r.headers["x-request-id"] for r in (fresh, unsafe, too_long)]
    assert all(len(given) == 32 for given in answers)
    assert len(set(answers)) == 3
    assert [r.json()["request_id"] for r in (fresh, unsafe, too_long)] == answers
    assert [line["request_id"] for line in lines.lines] == answers


def test_a_dead_letter_keeps_the_request_id_of_its_reading() -> None:
    record = ConsumerRecord(
        topic="telemetry.raw",
        partition=2,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=b"dev-1",
        value=b"{",
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=1,
        headers=[("request_id", b"req-9"), ("unrelated", b"x")],
    )
    headers = dict(dlq_headers(record, "aggregator-worker", "undecodable", attempts=1))
    assert headers["request_id"] == b"req-9"
    assert "unrelated" not in headers
    assert headers[HEADER_SOURCE_OFFSET] == b"7"
