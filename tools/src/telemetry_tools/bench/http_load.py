"""Closed-loop HTTP load: a fixed number of clients, each posting its next body as soon as
the previous one was answered. Bodies are serialised beforehand, so the client spends its
CPU on HTTP, not on building readings."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


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


async def post_all(
    base_url: str,
    path: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration_s: float | None = None,
    content_type: str = "application/json",
) -> LoadResult:
    """Post every body once (or, with ``duration_s``, cycle through them until time is up)."""
    result = LoadResult()
    source = itertools.cycle(bodies) if duration_s else iter(bodies)
    headers = {"Content-Type": content_type}
    async with aiohttp.ClientSession(
        base_url=base_url,
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as client:
        started = time.perf_counter()
        deadline = started + duration_s if duration_s else None

        async def one_client() -> None:
            for body in source:
                if deadline and time.perf_counter() >= deadline:
                    return
                sent = time.perf_counter()
                try:
                    async with client.post(path, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # no answer at all: counted as a failure, never as a request
                result.statuses[status] += 1
                if status:
                    result.latencies_s.append(time.perf_counter() - sent)
                    result.requests += 1

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result
