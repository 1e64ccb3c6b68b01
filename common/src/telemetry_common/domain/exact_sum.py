"""Exact float sums that merge in any order: Shewchuk's partials, as math.fsum keeps them.

A rollup's sum must equal a recomputation from the raw readings whatever the
batches were and whatever order they arrived in. Float addition is not
associative, so a running ``+=`` drifts with the order; the partials below hold
the exact sum of every value added (as a few non-overlapping floats), and
``math.fsum`` of them is that sum correctly rounded: the same float as
``math.fsum`` over the raw values. See Shewchuk, "Adaptive Precision
Floating-Point Arithmetic" (1997), and the msum recipe behind ``math.fsum``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def add_exact(partials: list[float], value: float) -> None:
    """Add ``value`` to ``partials`` in place, keeping the represented sum exact."""
    i = 0
    x = value
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def exact_partials(values: Iterable[float], partials: Iterable[float] = ()) -> list[float]:
    """The partials of ``values`` (plus any existing ``partials``)."""
    out = [p for p in partials if p]
    for value in values:
        add_exact(out, value)
    return [p for p in out if p] or [0.0]


def rounded(partials: Iterable[float]) -> float:
    """The exact sum, correctly rounded to a float."""
    return math.fsum(partials)
