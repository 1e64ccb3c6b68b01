"""One log format for every service: a JSON object per line (python-json-logger, orjson).

Each line has ts, level, service, logger and message, the request id of the
HTTP request being served (the APIs pass request_id.log_filter()), whatever a call passed in
``extra=`` (partition, offset, event_id...), so logs are searched by field, and
a logged exception's stack trace under ``exception``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

FIELDS = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger", "exc_info": "exception"}


def log_time(created: float) -> str:
    """A record's time as every timestamp the platform writes: ISO 8601 UTC, ms, Z."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


class JsonFormatter(OrjsonFormatter):
    def __init__(self, service: str):
        super().__init__(FIELDS, rename_fields=RENAMED, static_fields={"service": service})

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = log_time(record.created)
        super().add_fields(log_data, record, message_dict)
        # Set by the APIs' log filter (None outside a request); workers pass
        # request_id themselves in ``extra``, from the record's Kafka header.
        request_id = log_data.pop("correlation_id", None)
        if request_id:
            log_data["request_id"] = request_id


def configure_logging(level: str, service: str, filters: Sequence[logging.Filter] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    for log_filter in filters:
        handler.addFilter(log_filter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    root_level = logging.getLogger().level
    # aiokafka logs every reconnect attempt at ERROR while Kafka is down; the
    # services log the outage once themselves.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root_level))
    # PyMongo logs every command and pool checkout at DEBUG: at LOG_LEVEL=DEBUG,
    # which traces readings, those lines would outnumber ours a hundred to one.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, root_level))
    # asgi-correlation-id warns of each unusable X-Request-ID it replaces: a client
    # could double the log lines of every request (the answer tells it the new id).
    logging.getLogger("asgi_correlation_id").setLevel(max(logging.ERROR, root_level))
