"""Configuration kept in MongoDB (keys, alert rules) held in memory and reloaded in the background.

A check never waits on MongoDB: a change takes effect within one refresh, and an
unreachable MongoDB keeps the last known state rather than failing every request
or batch. MongoDB is polled, not watched through a change stream: change streams
need a replica set, and the compose deployment runs a standalone mongod.
"""

from __future__ import annotations

import asyncio
import logging

from telemetry_common.infra.background import BackgroundTasks

log = logging.getLogger(__name__)


class Reloading:
    """Calls ``reload`` every ``refresh_s`` seconds once started; ``loaded`` after one worked."""

    what = "configuration"

    def __init__(self, refresh_s: float):
        self._refresh_s = refresh_s
        self._background = BackgroundTasks()
        self.loaded = False

    async def reload(self) -> None:
        raise NotImplementedError

    def reload_failed(self, exc: Exception) -> None:
        log.warning("could not reload %s (%s); keeping the last known", self.what, exc)

    async def start(self) -> None:
        self._background.start(self._refresh_forever(), name=f"reload {self.what}")

    async def stop(self) -> None:
        await self._background.stop()

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.reload()
                self.loaded = True
            except Exception as exc:
                self.reload_failed(exc)
            await asyncio.sleep(self._refresh_s)
