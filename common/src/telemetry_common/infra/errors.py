"""The errors this platform raises about itself, each saying whether waiting could help.

A consumer retries a transient failure forever (the batch stays uncommitted)
and sends a permanent one to the dead-letter topic; errors of the libraries
underneath are sorted by what they say of themselves (``is_transient``).
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError
from pymongo.errors import ConnectionFailure, PyMongoError

from telemetry_common.infra.kafka.producer import is_stale_producer


class TelemetryError(Exception):
    # True: the same call may succeed later (a dependency is away or busy).
    transient: bool = False


def is_transient(exc: BaseException) -> bool:
    """Whether waiting could help: an unreachable or overloaded dependency, not bad data."""
    if isinstance(exc, TelemetryError):
        return exc.transient
    if is_stale_producer(exc):
        return True  # once the producer is renewed (ConsumerLoop does)
    if isinstance(exc, ConnectionFailure | asyncio.TimeoutError | OSError):
        return True
    if isinstance(exc, PyMongoError):
        return exc.has_error_label("RetryableWriteError") or exc.timeout
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    return False
