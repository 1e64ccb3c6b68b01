"""Rate limits: a token bucket per device and per API key, in this process's memory.

Pure logic with an injectable clock, so it is unit-tested without time passing.
Each replica limits what reaches it; with N replicas behind a balancer a device
gets at most N times its rate, which bounds a flood without a shared store on
the hot path.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ingestion_api.lru import LeastRecentlyUsed


@dataclass(slots=True)
class TokenBucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` tokens a second per key, bursts up to ``burst``; at most ``max_keys`` tracked.

    The least recently seen keys are forgotten first: a forgotten key starts with
    a full bucket again, which errs on letting a quiet device through.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: LeastRecentlyUsed[str, TokenBucket] = LeastRecentlyUsed(max_keys)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.burst, now)
            self._buckets.put(key, bucket)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def take(self, costs: Iterable[tuple[str, float]]) -> float:
        """Take every cost or none; return 0, or the seconds until all of them would fit.

        All-or-nothing, so a request refused for one device does not use up the
        allowance of the others in it.
        """
        if not self.enabled:
            return 0.0
        now = self._clock()
        wanted: dict[str, float] = {}
        for key, cost in costs:
            wanted[key] = wanted.get(key, 0.0) + cost
        wait = 0.0
        buckets = {key: self._bucket(key, now) for key in wanted}
        for key, cost in wanted.items():
            shortfall = min(cost, self.burst) - buckets[key].tokens
            if shortfall > 0:
                wait = max(wait, shortfall / self.rate)
        if wait > 0:
            return wait
        for key, cost in wanted.items():
            buckets[key].tokens -= min(cost, self.burst)
        return 0.0


class ReadingQuotas:
    """Readings a second per project, against its quota.

    A project's bucket holds a second's worth. A request may take it below zero
    (a batch larger than a second's quota is taken whole) and the project then
    waits until the debt is paid, so its average never exceeds the quota.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, project_id: str, rate: float | None, readings: int) -> float:
        """Take ``readings`` from the project's quota; 0, or the seconds until they fit."""
        if rate is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(project_id)
        if bucket is None:
            bucket = self._buckets[project_id] = TokenBucket(rate, now)
        else:
            bucket.tokens = min(rate, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        needed = min(float(readings), rate)
        if bucket.tokens < needed:
            return (needed - bucket.tokens) / rate
        bucket.tokens -= readings
        return 0.0


def retry_after_header(wait_s: float) -> dict[str, str]:
    # Retry-After takes whole seconds (RFC 9110 §10.2.3); round up so a client
    # that obeys it is never refused again for the same reason.
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


class TooManyWaiting(Exception):
    """A device already has as many requests waiting for their turn as it may."""


class DeviceTurns:
    """At most ``per_device`` requests of one device are handled at once; its others wait.

    This is what keeps one device from slowing the rest: a device that opens many
    connections and posts as fast as it is answered gets ``per_device`` requests'
    worth of the server, like any other device, while its surplus waits on a
    future (no CPU). Waiting is bounded: past ``max_waiting`` the caller refuses
    at once. Turns are handed over first come, first served.
    """

    def __init__(self, per_device: int, max_waiting: int):
        self.per_device = per_device
        self._max_waiting = max_waiting
        self._active: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    @property
    def enabled(self) -> bool:
        return self.per_device > 0

    async def acquire(self, device_id: str) -> None:
        """Return once it is this request's turn; raise TooManyWaiting instead of queueing more."""
        active = self._active.get(device_id, 0)
        if active < self.per_device:
            self._active[device_id] = active + 1
            return
        queue = self._waiting.setdefault(device_id, deque())
        if len(queue) >= self._max_waiting:
            raise TooManyWaiting(device_id)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(device_id)  # the turn was handed over as we were cancelled
            elif turn in queue:  # release() may already have dropped it
                queue.remove(turn)
                if not queue and self._waiting.get(device_id) is queue:
                    del self._waiting[device_id]
            raise

    def release(self, device_id: str) -> None:
        """End a turn: hand it to the device's next waiting request, if any."""
        queue = self._waiting.get(device_id)
        while queue:
            turn = queue.popleft()
            if not queue:
                del self._waiting[device_id]
            if not turn.done():
                turn.set_result(None)  # the turn passes on; the active count stays
                return
        remaining = self._active[device_id] - 1
        if remaining:
            self._active[device_id] = remaining
        else:
            del self._active[device_id]
