"""The one way the services wait and try again: capped exponential backoff with jitter.

Every retry loop (starting a Kafka client, handling a batch, committing,
publishing a dead letter, creating indexes, reconnecting a feed, polling the
webhook queue) goes through :func:`retrying`, so each waits the same way, logs
the same line and is counted in ``telemetry_retries_total{operation}``.

The jitter spreads the retries of many workers that failed together (a broker
restart) so they do not come back as one burst.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from telemetry_common.infra.errors import is_transient

log = logging.getLogger(__name__)

# Process-wide, registered in every service's registry (metrics.new_registry).
RETRIES = Counter(
    "telemetry_retries_total",
    "Failed attempts that were tried again, by what was being done",
    ["operation"],
    registry=None,
)


def retrying(
    operation: str,
    *,
    retry_on: Callable[[BaseException], bool] = is_transient,
    initial_s: float = 0.5,
    max_s: float = 10.0,
    give_up_after_s: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """Attempts of ``operation`` until one succeeds, fails with what ``retry_on`` refuses,
    or fails after ``give_up_after_s`` (None: never gives up); the last error is raised
    as it was.

    Use as ``async for attempt in retrying(...): with attempt: ...``. ``sleep``: how to
    wait between attempts (a consumer waits while still polling its group).
    """
    counted = RETRIES.labels(operation)

    def before_sleep(state: RetryCallState) -> None:
        counted.inc()
        assert state.outcome is not None and state.next_action is not None
        exc = state.outcome.exception()
        log.warning(
            "%s failed (attempt %d): %s; retrying in %.1fs",
            operation,
            state.attempt_number,
            f"{type(exc).__name__}: {exc}",
            state.next_action.sleep,
            # A transient failure's cause is its message; another's is in its trace.
            exc_info=None if exc is None or is_transient(exc) else exc,
        )

    def worth_retrying(exc: BaseException) -> bool:
        # A cancellation (a stopping worker) or an exit is obeyed, whatever retry_on says.
        return isinstance(exc, Exception) and retry_on(exc)

    return AsyncRetrying(
        retry=retry_if_exception(worth_retrying),
        stop=stop_never if give_up_after_s is None else stop_after_delay(give_up_after_s),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
