"""Tasks a component runs beside its requests or its consume loop, stopped together."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTasks:
    """Started with :meth:`start`, cancelled and awaited by :meth:`stop`.

    A task that ends by raising is logged at once, with its trace: nobody awaits
    a background task until shutdown, so its error would otherwise go unseen.
    """

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        # A fresh context: a task started while serving a request outlives it, and its
        # log lines must not carry that request's id.
        task = asyncio.create_task(work, name=name, context=contextvars.Context())
        self._running.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s stopped", task.get_name(), exc_info=exc)

    async def stop(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
