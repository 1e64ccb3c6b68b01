"""Background tasks: stopped together, crashes logged, never the starting request's id."""

from __future__ import annotations

import asyncio
import logging

import pytest
from asgi_correlation_id import correlation_id
from telemetry_common.infra.background import BackgroundTasks


async def test_stop_cancels_and_awaits_every_task_still_running() -> None:
    tasks = BackgroundTasks()
    stopped: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(name)

    first, second = tasks.start(forever("a"), "a"), tasks.start(forever("b"), "b")
    await asyncio.sleep(0)
    await tasks.stop()
    assert sorted(stopped) == ["a", "b"]
    assert first.cancelled() and second.cancelled()


async def test_a_crash_is_logged_when_it_happens(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()

    async def crash() -> None:
        raise RuntimeError("feed broke")

    with caplog.at_level(logging.ERROR, logger="telemetry_common.infra.background"):
        task = tasks.start(crash(), "alert feed")
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)
    [record] = caplog.records
    assert "alert feed" in record.getMessage() and record.exc_info is not None
    await tasks.stop()


async def test_a_task_started_while_serving_a_request_has_no_request_id() -> None:
    tasks = BackgroundTasks()
    seen: list[str | None] = []

    async def note_id() -> None:
        seen.append(correlation_id.get())

    token = correlation_id.set("req-42")
    try:
        await tasks.start(note_id(), "probe")
    finally:
        correlation_id.reset(token)
    assert seen == [None]
