"""Rollup resolutions ('1m', '1h', ...) as bucket widths, their retention, and serving an interval.

Shared by the writer (which buckets to keep, for how long) and the readers
(which stored resolution can answer a requested interval).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from telemetry_common.domain.identifiers import RESOLUTION_RE

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
DAY_S = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DEFAULT_RESOLUTIONS = "1m,5m,15m,1h,1d"
# The resolutions the aggregator writes; each other one served is merged at read
# time from the coarsest of these that divides it (5m and 15m from 1m). A device
# reporting less often than every 15 minutes puts one reading in each 1m, 5m and
# 15m bucket, so storing all three wrote three documents per reading for one
# reading's worth of information; merging at most 15 minute buckets per row on
# read costs far less than writing them (README "Storage layout").
DEFAULT_MATERIALIZED = "1m,1h,1d"
# Kept from the bucket's last write, like raw readings from their arrival, so a
# backfill of old history lives as long as fresh data. A resolution with no
# entry is kept forever.
DEFAULT_ROLLUP_RETENTION = "1m=7d,5m=30d,15m=30d,1h=365d,1d=forever"
FOREVER = "forever"


def resolution_seconds(resolution: str) -> int:
    """'1m' -> 60, '1h' -> 3600; the width must divide a day (or be whole days)."""
    match = RESOLUTION_RE.fullmatch(resolution)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"resolution {resolution!r} is not like 30s, 1m, 5m, 1h or 1d")
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    # Buckets aligned to the epoch line up with days only if the width divides one.
    if DAY_S % seconds and seconds % DAY_S:
        raise ValueError(f"resolution {resolution!r} does not divide a day evenly")
    return seconds


def parse_resolutions(spec: str) -> dict[str, int]:
    """'1m,1h' -> {'1m': 60, '1h': 3600}, in the order given."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError("at least one resolution is required, e.g. 1m")
    widths = {name: resolution_seconds(name) for name in names}
    by_width: dict[int, str] = {}
    for name, width in widths.items():
        if width in by_width:
            raise ValueError(f"resolutions {by_width[width]!r} and {name!r} are the same width")
        by_width[width] = name
    return widths


def parse_duration(text: str) -> timedelta:
    """'7d', '36h', '90m', '30s' -> a timedelta (no zero, no fractions)."""
    match = RESOLUTION_RE.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"duration {text!r} is not like 30s, 90m, 36h or 7d")
    return timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2)])


def parse_retention(spec: str, resolutions: Mapping[str, int]) -> dict[str, timedelta | None]:
    """'1m=7d,1h=365d,1d=forever' -> how long each resolution is kept (None: forever).

    Entries for resolutions that are not rolled up are refused, since they are
    most likely a typo that would leave the intended one kept forever.
    """
    kept: dict[str, timedelta | None] = dict.fromkeys(resolutions)
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, duration = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(f"retention entry {part!r} is not like 1m=7d")
        if name not in resolutions:
            raise ValueError(
                f"retention for {name!r}, which is not one of the resolutions "
                f"{', '.join(resolutions)}"
            )
        kept[name] = None if duration == FOREVER else parse_duration(duration)
    return kept


def bucket_start(ts: datetime, width_s: int) -> datetime:
    """The start of the epoch-aligned bucket of width ``width_s`` that holds ``ts``."""
    offset = int((ts - EPOCH).total_seconds() // width_s) * width_s
    return EPOCH + timedelta(seconds=offset)


def serving_resolution(interval_s: int, stored: Mapping[str, int]) -> str | None:
    """The coarsest stored resolution whose buckets tile ``interval_s`` exactly, or None.

    10m is served by merging 5m buckets (or 1m ones when 5m is not kept); 7m by
    none of the defaults, since no stored width divides it.
    """
    fitting = [(width, name) for name, width in stored.items() if interval_s % width == 0]
    return max(fitting)[1] if fitting else None


@dataclass(frozen=True)
class RollupPlan:
    """Which served resolutions are stored, and from which stored one each other is merged."""

    served: dict[str, int]
    stored: dict[str, int]
    # A resolution merged at read time -> the stored resolution it is merged from.
    derived: dict[str, str]

    @classmethod
    def of(cls, served: Mapping[str, int], materialized: Mapping[str, int]) -> RollupPlan:
        """Store the served resolutions named in ``materialized``, and any other that no
        stored resolution divides (a 30s resolution is stored even if only 1m is named)."""
        stored = {name: width for name, width in served.items() if name in materialized}
        derived: dict[str, str] = {}
        for name, width in sorted(served.items(), key=lambda item: item[1]):
            if name in stored:
                continue
            source = serving_resolution(width, stored)
            if source is None:
                stored[name] = width
            else:
                derived[name] = source
        return cls(
            served=dict(served),
            stored={name: width for name, width in served.items() if name in stored},
            derived={name: derived[name] for name in served if name in derived},
        )

    def derived_from(self, source: str) -> dict[str, int]:
        """Widths of the resolutions merged from ``source``."""
        return {name: self.served[name] for name, s in self.derived.items() if s == source}

    def stored_retention(
        self, retention: Mapping[str, timedelta | None]
    ) -> dict[str, timedelta | None]:
        """How long each stored resolution is kept: the longest of its own retention and
        that of every resolution merged from it (None, forever, is the longest)."""
        kept: dict[str, timedelta | None] = {}
        for name in self.stored:
            spans = [retention.get(name)] + [retention.get(d) for d in self.derived_from(name)]
            known = [span for span in spans if span is not None]
            kept[name] = max(known) if len(known) == len(spans) else None
        return kept


# What the aggregator stores and the dashboard serves when nothing is configured.
DEFAULT_PLAN = RollupPlan.of(
    parse_resolutions(DEFAULT_RESOLUTIONS), parse_resolutions(DEFAULT_MATERIALIZED)
)
