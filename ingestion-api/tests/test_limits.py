"""Rate limits and the recent-duplicates memory: pure logic, a fake clock, no server."""

from __future__ import annotations

from ingestion_api.dedupe import RecentEventIds
from ingestion_api.limits import RateLimiter, retry_after_header


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
