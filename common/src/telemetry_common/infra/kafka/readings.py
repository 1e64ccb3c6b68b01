"""Readings on telemetry.raw: the canonical JSON value, their project and request id in headers.

The key stays the device id (per-device order, and partitions as before); the
project rides in the ``project`` header, so a consumer learns it without
parsing the value and a record written before projects (no header) is the
default project's. The ``request_id`` header names the HTTP request that posted
it; each worker logs it beside the record it processed, so one search finds a
reading's path through the API, Kafka and both workers.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from telemetry_common.domain.identifiers import PROJECT_ID_RE
from telemetry_common.domain.reading import FieldError, InvalidReading, Reading, decode_kafka_value
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT

PROJECT_HEADER = "project"
REQUEST_ID_HEADER = "request_id"
_DEFAULT_HEADER = (PROJECT_HEADER, DEFAULT_PROJECT.encode())


def project_header(project_id: str) -> tuple[str, bytes]:
    return (
        _DEFAULT_HEADER if project_id == DEFAULT_PROJECT else (PROJECT_HEADER, project_id.encode())
    )


def project_of(headers: Sequence[tuple[str, bytes]] | None) -> str:
    """The record's project (the default one when it carries none); InvalidReading when the
    header is not a project id, as for any other malformed part of a record."""
    for key, value in headers or ():
        if key == PROJECT_HEADER:
            project_id = value.decode("utf-8", "replace")
            if not PROJECT_ID_RE.fullmatch(project_id):
                raise InvalidReading([FieldError(PROJECT_HEADER, "header is not a project id")])
            return project_id
    return DEFAULT_PROJECT


def request_id_of(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key == REQUEST_ID_HEADER:
            return value.decode("utf-8", "replace")
    return None


def decode_reading(record: ConsumerRecord) -> Reading:
    """A telemetry.raw record as the Reading it carries, in its project."""
    return decode_kafka_value(record.value, project_of(record.headers))
