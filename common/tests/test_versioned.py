"""Unit tests for telemetry_common.infra.versioned's pipelined writes (no server)."""

from __future__ import annotations

import asyncio

import pytest
from telemetry_common.infra.versioned import _pipelined


async def test_every_chunk_is_sent_and_its_result_kept() -> None:
    async def send(chunk: list[int]) -> int:
        await asyncio.sleep(0.001 * (10 - chunk[0]))
        return sum(chunk)

    results = await _pipelined(send, ([i, i] for i in range(10)))
    assert sorted(results) == [2 * i for i in range(10)]


async def test_a_failed_chunk_lets_the_others_finish_rather_than_cancelling_them() -> None:
    # A driver operation cancelled mid-checkout can leave pymongo's async pool
    # deadlocked: after a MongoDB restart the workers then waited forever.
    finished: list[int] = []

    async def send(chunk: list[int]) -> int:
        if chunk == [0]:
            raise ConnectionError("MongoDB went away")
        await asyncio.sleep(0.01)
        finished.append(chunk[0])
        return chunk[0]

    with pytest.raises(ConnectionError):
        await _pipelined(send, ([i] for i in range(3)))
    assert sorted(finished) == [1, 2]
