"""Rate limits, device turns and the recent-duplicates memory: pure logic, no server."""

from __future__ import annotations

import asyncio

import pytest
from ingestion_api.dedupe import RecentEventIds
from ingestion_api.limits import (
    DeviceTurns,
    RateLimiter,
    ReadingQuotas,
    TooManyWaiting,
    retry_after_header,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_device_gets_its_burst_then_waits_for_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=20, clock=clock)
    assert limiter.take([("dev-1", 20)]) == 0
    wait = limiter.take([("dev-1", 5)])
    assert wait == 0.5  # 5 readings at 10/s
    clock.now += 0.5
    assert limiter.take([("dev-1", 5)]) == 0


def test_one_flooding_device_does_not_use_up_another_devices_allowance() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=3, clock=clock)
    for _ in range(3):
        assert limiter.take([("flood", 1)]) == 0
    assert limiter.take([("flood", 1)]) > 0
    assert limiter.take([("quiet", 1)]) == 0


def test_a_refused_request_takes_nothing_from_the_devices_that_had_room() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    assert limiter.take([("full", 2)]) == 0
    assert limiter.take([("room", 1), ("full", 1)]) > 0
    assert limiter.take([("room", 2)]) == 0  # still had both tokens


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket() -> None:
    limiter = RateLimiter(rate=100, burst=5000, clock=FakeClock())
    assert limiter.take([("backfill", 1.0)] * 5000) == 0
    assert limiter.take([("backfill", 1.0)]) > 0


def test_zero_rate_turns_the_limit_off() -> None:
    limiter = RateLimiter(rate=0, burst=1, clock=FakeClock())
    assert all(limiter.take([("dev", 1000)]) == 0 for _ in range(10))


def test_memory_is_bounded_and_forgets_the_least_recent_device() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1, burst=1, max_keys=2, clock=clock)
    limiter.take([("a", 1)])
    limiter.take([("b", 1)])
    limiter.take([("c", 1)])  # forgets "a"
    assert limiter.take([("a", 1)]) == 0  # a fresh bucket
    assert limiter.take([("c", 1)]) > 0


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(0.2) == {"Retry-After": "1"}
    assert retry_after_header(2.01) == {"Retry-After": "3"}


def test_recent_event_ids_remember_what_was_acknowledged_within_capacity() -> None:
    recent = RecentEventIds(capacity=2)
    recent.add_all(["e1", "e2"])
    assert "e1" in recent and "e2" in recent
    recent.add_all(["e3"])
    assert "e1" not in recent and "e3" in recent
    off = RecentEventIds(capacity=0)
    off.add_all(["e1"])
    assert "e1" not in off


async def _settle() -> None:
    # Let every task that can run do so (turns are handed over through futures).
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_devices_extra_requests_wait_their_turn_in_order() -> None:
    turns = DeviceTurns(per_device=1, max_waiting=10)
    served: list[str] = []

    async def request(name: str) -> None:
        await turns.acquire("flood")
        served.append(name)

    await turns.acquire("flood")
    waiting = [asyncio.create_task(request(name)) for name in ("second", "third")]
    await _settle()
    assert served == []  # the first still holds the device's only turn
    turns.release("flood")
    await _settle()
    assert served == ["second"]
    turns.release("flood")
    await _settle()
    assert served == ["second", "third"]
    await asyncio.gather(*waiting)


async def test_a_busy_device_does_not_hold_up_another_device() -> None:
    turns = DeviceTurns(per_device=2, max_waiting=10)
    await turns.acquire("flood")
    await turns.acquire("flood")
    blocked = asyncio.create_task(turns.acquire("flood"))
    await _settle()
    assert not blocked.done()
    await asyncio.wait_for(turns.acquire("quiet"), timeout=5)
    blocked.cancel()


async def test_past_the_waiting_bound_a_request_is_refused_at_once() -> None:
    turns = DeviceTurns(per_device=1, max_waiting=1)
    await turns.acquire("flood")
    waiting = asyncio.create_task(turns.acquire("flood"))
    await _settle()
    with pytest.raises(TooManyWaiting):
        await turns.acquire("flood")
    waiting.cancel()


async def test_a_request_that_gives_up_waiting_leaves_the_turn_to_the_next() -> None:
    turns = DeviceTurns(per_device=1, max_waiting=10)
    await turns.acquire("dev")
    gave_up = asyncio.create_task(turns.acquire("dev"))
    patient = asyncio.create_task(turns.acquire("dev"))
    await _settle()
    gave_up.cancel()
    await _settle()
    turns.release("dev")
    await asyncio.wait_for(patient, timeout=5)
    turns.release("dev")
    # Every turn is back: the device can be served again without waiting.
    await asyncio.wait_for(turns.acquire("dev"), timeout=5)


def test_a_projects_quota_holds_its_average_even_for_batches_larger_than_a_second() -> None:
    clock = FakeClock()
    quotas = ReadingQuotas(clock=clock)
    assert quotas.take("prj-a", rate=100.0, readings=500) == 0.0  # a full bucket takes it whole
    # 400 readings in debt: the project waits until a second's worth is back.
    assert quotas.take("prj-a", rate=100.0, readings=1) == pytest.approx(4.01)
    clock.now += 4.0
    assert quotas.take("prj-a", rate=100.0, readings=1) > 0
    clock.now += 1.0
    assert quotas.take("prj-a", rate=100.0, readings=100) == 0.0
    # Over 5 s, 600 readings: the quota's 100/s plus the one second's bucket it started with.


def test_projects_have_quotas_of_their_own_and_none_means_no_limit() -> None:
    quotas = ReadingQuotas(clock=FakeClock())
    assert quotas.take("prj-a", rate=10.0, readings=10) == 0.0
    assert quotas.take("prj-a", rate=10.0, readings=1) > 0
    assert quotas.take("prj-b", rate=10.0, readings=10) == 0.0
    assert all(quotas.take("default", rate=None, readings=10_000) == 0.0 for _ in range(100))
