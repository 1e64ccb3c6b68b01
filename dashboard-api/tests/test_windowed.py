"""A window cut into pieces: whole stored buckets where they fit, raw readings at the edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from dashboard_api.windowed import RAW, Piece, pieces
from hypothesis import given
from hypothesis import strategies as st

STORED = {"1m": 60, "1h": 3600, "1d": 86400}
T0 = datetime(2025, 1, 15, tzinfo=UTC)


def at(hms: str) -> datetime:
    h, m, s = (float(part) for part in hms.split(":"))
    return T0 + timedelta(hours=h, minutes=m, seconds=s)


def test_a_ragged_window_uses_the_coarsest_buckets_inside_and_raw_seconds_at_the_edges() -> None:
    assert pieces(at("09:30:15"), at("11:10:45"), STORED) == [
        Piece(RAW, at("09:30:15"), at("09:31:00")),
        Piece("1m", at("09:31:00"), at("10:00:00")),
        Piece("1h", at("10:00:00"), at("11:00:00")),
        Piece("1m", at("11:00:00"), at("11:10:00")),
        Piece(RAW, at("11:10:00"), at("11:10:45")),
    ]


def test_an_aligned_window_is_one_piece_and_a_short_one_raw() -> None:
    assert pieces(at("10:00:00"), at("12:00:00"), STORED) == [
        Piece("1h", at("10:00:00"), at("12:00:00"))
    ]
    assert pieces(at("10:00:05"), at("10:00:50"), STORED) == [
        Piece(RAW, at("10:00:05"), at("10:00:50"))
    ]
    # Nothing stored (a tag, no metric): all of it raw.
    assert pieces(at("10:00:00"), at("12:00:00"), {}) == [
        Piece(RAW, at("10:00:00"), at("12:00:00"))
    ]


@given(
    start=st.integers(0, 3 * 86400 * 1000),
    length=st.integers(1, 3 * 86400 * 1000),
)
def test_the_pieces_cover_the_window_once_each_on_whole_buckets(start: int, length: int) -> None:
    low = T0 + timedelta(milliseconds=start)
    high = low + timedelta(milliseconds=length)
    cut = pieces(low, high, STORED)
    assert cut[0].start == low and cut[-1].end == high
    for before, after in pairwise(cut):
        assert before.end == after.start
    for piece in cut:
        assert piece.start < piece.end
        if piece.source != RAW:
            width = timedelta(seconds=STORED[piece.source])
            assert (piece.start - T0) % width == timedelta(0)
            assert (piece.end - T0) % width == timedelta(0)
