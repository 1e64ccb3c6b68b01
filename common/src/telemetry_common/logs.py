"""One log format for every service: a JSON object per line.

Each line has ts, level, service, logger and message, the request id of the
HTTP request being served (see request_id.py), and whatever a call passed in
``extra=`` (partition, offset, event_id...), so logs are searched by field.
"""

from __future__ import annotations

import json
import logging
import time

from telemetry_common.request_id import current_request_id

# Attributes every LogRecord has; anything else on a record came from extra=.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    root_level = logging.getLogger().level
    # aiokafka logs every reconnect attempt at ERROR while Kafka is down; the
    # services log the outage once themselves.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root_level))
    # PyMongo logs every command and pool checkout at DEBUG: at LOG_LEVEL=DEBUG,
    # which traces readings, those lines would outnumber ours a hundred to one.
    logging.getLogger("pymongo").setLevel(max(logging.INFO, root_level))
