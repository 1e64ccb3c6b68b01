import random

from hypothesis import given
from hypothesis import strategies as st
from telemetry_tools.loadgen import first_upload_at


@given(
    fleet_size=st.integers(1, 2000),
    interval=st.floats(0.01, 1000.0),
    window_start=st.floats(0.0, 1.0),
    window_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
)
def test_any_window_of_the_first_interval_holds_its_share_of_the_uploads(
    fleet_size: int, interval: float, window_start: float, window_share: float, seed: int
) -> None:
    rng = random.Random(seed)
    firsts = [first_upload_at(i, fleet_size, interval, rng) for i in range(fleet_size)]
    start = window_start * interval
    end = min(interval, start + window_share * interval)
    inside = sum(start <= t < end for t in firsts)
    expected = fleet_size * (end - start) / interval
    # Whole slots inside the window count exactly; the two it cuts, 0 or 1 each.
    assert abs(inside - expected) < 2


def test_devices_do_not_upload_in_lockstep() -> None:
    rng = random.Random(7)
    firsts = [first_upload_at(i, 100, 10.0, rng) for i in range(100)]
    assert len(set(firsts)) == 100
    assert all(0 <= t < 10.0 for t in firsts)
