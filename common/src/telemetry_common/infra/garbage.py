"""Cyclic garbage collected between a worker's batches instead of during them."""

from __future__ import annotations

import gc
import time


class YoungGarbage:
    """Collects cyclic garbage between batches instead of during them.

    A worker's held state is hundreds of thousands of long-lived objects, and a
    batch creates a million short-lived ones; Python's automatic collector,
    triggered by allocations, kept rescanning the former (BENCHMARKS.md, design
    choices). So automatic collection is off, the young generations are collected
    after each batch (cheap: only what the batch left), and the whole heap every
    ``full_every_s``. The worker runtime (``worker.run_worker``) holds one while it
    runs, and :meth:`stop` gives the process its automatic collection back.
    """

    def __init__(self, full_every_s: float = 300.0):
        self._full_every_s = full_every_s
        self._last_full = time.monotonic()
        gc.disable()

    def stop(self) -> None:
        gc.enable()

    def after_batch(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= self._full_every_s:
            gc.collect()
            self._last_full = now
        else:
            gc.collect(1)
