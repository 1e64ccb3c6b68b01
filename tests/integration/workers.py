"""Running a worker inside the test's event loop, against the session's real servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from telemetry_common.infra.metrics import new_registry


@asynccontextmanager
async def running(
    run: Callable[[Any, CollectorRegistry, asyncio.Event], Awaitable[None]], settings: Any
) -> AsyncIterator[CollectorRegistry]:
    """Start ``run(settings, registry, stop)`` as a task; stop it cleanly on exit."""
    stop = asyncio.Event()
    registry = new_registry()
    task = asyncio.create_task(run(settings, registry, stop))
    try:
        yield registry
        if task.done():
            task.result()  # surface a crash as the test's failure
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def metric_value(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float:
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value
