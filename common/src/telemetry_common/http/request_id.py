"""The request id of the APIs: HTTP header, log field, Kafka header.

Both APIs take the client's ``X-Request-ID`` (or make one) and answer with it:
asgi-correlation-id's middleware, which keeps the id in its ``correlation_id``
ContextVar while the request is served; its log filter puts it on every line
logged meanwhile. ingestion-api sends it with every reading of that request as
the Kafka header ``request_id`` (kafka/readings.py), which the workers log.
"""

from __future__ import annotations

import logging
import re

from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI

from telemetry_common.infra.kafka.readings import REQUEST_ID_HEADER

HTTP_HEADER = "X-Request-ID"

# A client's id is kept only if it is short and plain: it ends up in log lines.
# The library's default keeps UUIDs only; devices send ids of their own.
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _acceptable(given: str) -> bool:
    return _ACCEPTABLE.fullmatch(given) is not None


def add_request_id(app: FastAPI) -> None:
    """Add after every other middleware: outermost, every answer carries the id,
    refusals and those of middlewares that answer themselves included."""
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name=HTTP_HEADER,
        validator=_acceptable,
        # Per-request work the ingest hot path does not need: no transformation, and
        # the id is read from the ContextVar, not from the request's headers.
        transformer=None,
        update_request_header=False,
    )


def kafka_headers() -> list[tuple[str, bytes]]:
    """The headers that carry the current request id into Kafka (none outside a request)."""
    request_id = correlation_id.get()
    return [(REQUEST_ID_HEADER, request_id.encode())] if request_id else []


def log_filter() -> logging.Filter:
    """For configure_logging: the request id on every line logged while serving a request."""
    return CorrelationIdFilter()
