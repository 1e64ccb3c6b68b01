"""Closed-loop HTTP load: a fixed number of clients, each posting its next body as soon as
the previous one was answered.

The client shares the machine's cores with the API and Kafka, so every microsecond it
spends is one the server does not get. It therefore speaks plain HTTP/1.1 keep-alive over
asyncio streams on uvloop, far cheaper a request than a general client such as aiohttp;
the bench measures its ceiling against `answer_at_once` (a server that does nothing), so
a figure near that ceiling says the client, not the API, was the limit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import uvloop

T = TypeVar("T")


@dataclass
class LoadResult:
    requests: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if status // 100 != 2)


def combined(results: list[LoadResult]) -> LoadResult:
    """Several runs' requests, time, latencies and statuses as one."""
    total = LoadResult()
    for result in results:
        total.requests += result.requests
        total.elapsed_s += result.elapsed_s
        total.latencies_s += result.latencies_s
        total.statuses.update(result.statuses)
    return total


def run_on_uvloop(main: Coroutine[object, object, T]) -> T:
    """asyncio.run on uvloop: the load generator's own CPU is kept as small as it can be."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class _Connection:
    """One keep-alive HTTP/1.1 connection; any protocol surprise closes it (status 0)."""

    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, head: bytes, body: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        assert self._reader is not None
        self._writer.write(head + body)
        response_head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        lowered = response_head.lower()
        start = lowered.find(b"\r\ncontent-length:")
        if start < 0:
            raise ConnectionError("response without Content-Length")
        end = lowered.index(b"\r\n", start + 2)
        await self._reader.readexactly(int(lowered[start + 17 : end]))
        if b"\r\nconnection: close" in lowered:
            self.close()
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def post_all(
    base_url: str,
    path: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration_s: float | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Post every body once (or, with ``duration_s``, cycle through them until time is up)."""
    result = LoadResult()
    source = itertools.cycle(bodies) if duration_s else iter(bodies)
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head_prefix = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: "
    ).encode()
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else None

    async def one_client() -> None:
        connection = _Connection(host, port)
        try:
            for body in source:
                if deadline and time.perf_counter() >= deadline:
                    return
                head = head_prefix + str(len(body)).encode() + b"\r\n\r\n"
                sent = time.perf_counter()
                try:
                    async with asyncio.timeout(60):
                        status = await connection.post(head, body)
                except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                    connection.close()
                    status = 0  # no answer at all: counted as a failure, never as a request
                result.statuses[status] += 1
                if status:
                    result.latencies_s.append(time.perf_counter() - sent)
                    result.requests += 1
        finally:
            connection.close()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result
