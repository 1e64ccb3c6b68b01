"""Small helpers the e2e tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from telemetry_tools.stack import Stack

T = TypeVar("T")


def url(stack: Stack, service: str, path: str) -> str:
    port = next(s.port for s in stack.services if s.name == service)
    return f"http://127.0.0.1:{port}{path}"


def wait_for(fetch: Callable[[], T], predicate: Callable[[T], bool], timeout_s: float = 30.0) -> T:
    """Fetch until the predicate holds or time is up; return the last value either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)
