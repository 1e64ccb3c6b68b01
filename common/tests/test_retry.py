"""The one retry policy: what it retries, how long it waits, what it counts."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest
from pymongo.errors import AutoReconnect, OperationFailure
from telemetry_common.infra.metrics import new_registry
from telemetry_common.infra.retry import RETRIES, retrying


class Flaky:
    def __init__(self, failures: list[BaseException]):
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def retried(operation: str) -> float:
    return RETRIES.labels(operation)._value.get()


async def test_transient_failures_are_retried_with_capped_growing_waits() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    call = Flaky([AutoReconnect("primary away")] * 8)
    before = retried("test: transient")
    async for attempt in retrying("test: transient", initial_s=0.5, max_s=4.0, sleep=sleep):
        with attempt:
            result = await call()
    assert result == "done"
    assert call.calls == 9
    assert retried("test: transient") - before == 8
    # 0.5, 1, 2, 4, then capped at 4; each with up to 0.5 s of jitter within the cap.
    for wait, base in zip(waits, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True):
        assert base <= wait <= min(base + 0.5, 4.0)


async def test_a_failure_waiting_cannot_fix_is_raised_at_once() -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    call = Flaky([OperationFailure("bad query", code=2)])
    with pytest.raises(OperationFailure, match="bad query"):
        async for attempt in retrying("test: permanent", sleep=sleep):
            with attempt:
                await call()
    assert call.calls == 1


async def test_retry_on_decides_what_is_retried() -> None:
    async def sleep(seconds: float) -> None:
        pass

    call = Flaky([ValueError("once"), KeyError("then this")])
    with pytest.raises(KeyError):
        async for attempt in retrying(
            "test: chosen", retry_on=lambda exc: isinstance(exc, ValueError), sleep=sleep
        ):
            with attempt:
                await call()
    assert call.calls == 2


async def test_a_cancelled_attempt_is_never_retried_whatever_retry_on_says() -> None:
    # A worker told to stop cancels its batch: the retry must not swallow that.
    async def sleep(seconds: float) -> None:
        raise AssertionError("must not wait")

    call = Flaky([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        async for attempt in retrying("test: cancelled", retry_on=lambda _: True, sleep=sleep):
            with attempt:
                await call()
    assert call.calls == 1


async def test_every_service_registry_exposes_the_retry_count() -> None:
    async def sleep(seconds: float) -> None:
        pass

    call = Flaky([AutoReconnect("away")])
    async for attempt in retrying("test: exposed", sleep=sleep):
        with attempt:
            await call()
    exposed = generate_latest(new_registry()).decode()
    assert 'telemetry_retries_total{operation="test: exposed"} 1.0' in exposed
