"""Unit tests for aggregator_worker.store's pure parts."""

from __future__ import annotations

from aggregator_worker.store import RecentBuckets


def test_recent_buckets_forget_the_least_recently_written_first() -> None:
    recent = RecentBuckets(capacity=3)
    recent.add(["a", "b", "c"])
    recent.add(["a", "d"])  # "a" written again: "b" is now the oldest
    assert [i for i in "abcd" if i in recent] == ["a", "c", "d"]
    assert len(recent) == 3
