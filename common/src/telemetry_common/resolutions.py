"""Rollup resolutions ('1m', '1h', ...) as bucket widths; shared by the writer and the readers."""

from __future__ import annotations

import re

_RESOLUTION_RE = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def resolution_seconds(resolution: str) -> int:
    """'1m' -> 60, '1h' -> 3600; the width must divide a day (or be whole days)."""
    match = _RESOLUTION_RE.fullmatch(resolution)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"resolution {resolution!r} is not like 30s, 1m, 5m, 1h or 1d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    # Buckets aligned to the epoch line up with days only if the width divides one.
    if 86_400 % seconds and seconds % 86_400:
        raise ValueError(f"resolution {resolution!r} does not divide a day evenly")
    return seconds


def parse_resolutions(spec: str) -> dict[str, int]:
    """'1m,1h' -> {'1m': 60, '1h': 3600}, in the order given."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ValueError("at least one resolution is required, e.g. 1m")
    return {name: resolution_seconds(name) for name in names}
