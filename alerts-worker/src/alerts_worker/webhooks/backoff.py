"""When a failed delivery is tried again: exponential backoff with jitter.

"Equal jitter" (AWS Architecture Blog, Exponential Backoff And Jitter): attempt n
waits between half and all of ``initial * 2^(n-1)``, capped at ``maximum``.
The random half spreads the retries of many deliveries that failed together
(a receiver's outage) so they do not return as one burst; the fixed half keeps
a retry from coming back almost at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(
    failed_attempts: int,
    initial_s: float,
    maximum_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``failed_attempts`` failures (1 for the first)."""
    ceiling = min(maximum_s, initial_s * 2.0 ** min(failed_attempts - 1, 60))
    return ceiling / 2 + rand() * ceiling / 2
