"""Figures over any window (count, distinct devices, percentiles), from the rollups where
they can be.

Pure (no I/O), unit-tested without a server. A window is cut into pieces: its
middle from the coarsest stored resolution whose whole buckets fit in it, what
is left at each end from the next finer one, and what no stored bucket fits
(seconds at the edges) from the raw readings. Buckets are epoch-aligned and a
bucket holds exactly the readings of its span, so the pieces together count
every reading of the window once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from telemetry_common.domain.resolutions import bucket_start

RAW = "raw"


@dataclass(frozen=True, slots=True)
class Piece:
    """[start, end) served from ``source``: a stored resolution, or RAW."""

    source: str
    start: datetime
    end: datetime


def _ceil(moment: datetime, width_s: int) -> datetime:
    start = bucket_start(moment, width_s)
    return start if start == moment else start + timedelta(seconds=width_s)


def pieces(start: datetime, end: datetime, stored: Mapping[str, int]) -> list[Piece]:
    """[start, end) as pieces in time order, each from the coarsest source that fits it."""
    widths = sorted(stored.items(), key=lambda item: item[1], reverse=True)

    def split(low: datetime, high: datetime, finer: int) -> list[Piece]:
        if low >= high:
            return []
        if finer == len(widths):
            return [Piece(RAW, low, high)]
        name, width = widths[finer]
        first, last = _ceil(low, width), bucket_start(high, width)
        if first >= last:
            return split(low, high, finer + 1)
        return [
            *split(low, first, finer + 1),
            Piece(name, first, last),
            *split(last, high, finer + 1),
        ]

    return split(start, end, 0)
