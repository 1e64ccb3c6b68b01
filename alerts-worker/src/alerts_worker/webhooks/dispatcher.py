"""Where due deliveries are sent: picked from MongoDB, attempted, and their outcome recorded.

The queue is the ``webhook_deliveries`` collection itself, so a restart resumes
every pending delivery and replicas share the work. A delivery is claimed with
one atomic update that moves its ``next_attempt_at`` past the attempt's timeout
(a lease): no other replica picks it meanwhile, and if this process dies
mid-attempt the lease runs out and the delivery is due again. The receiver drops
the rare repeat by its Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.domain.webhook_signature import delivery_headers
from telemetry_common.infra.mongo import WEBHOOK_CIRCUITS, WEBHOOK_DELIVERIES, WEBHOOKS, Database
from telemetry_common.infra.retry import retrying
from telemetry_common.infra.settings import WebhookDeliverySettings

from alerts_worker.documents import DeliveryAttempt
from alerts_worker.webhooks.backoff import retry_delay
from alerts_worker.webhooks.circuit import Breakers, CircuitState
from alerts_worker.webhooks.delivery import AttemptResult, attempt
from alerts_worker.webhooks.metrics import WebhookMetrics, url_label
from alerts_worker.webhooks.records import CANCELLED, DELIVERED, FAILED, PENDING

log = logging.getLogger(__name__)

# Beyond the attempt's own timeout, before a claimed delivery is someone else's to try.
LEASE_MARGIN_S = 30.0
# How often the queue depth gauge is refreshed (a count query).
DUE_REPORT_INTERVAL_S = 1.0


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: WebhookDeliverySettings,
        metrics: WebhookMetrics,
        client: aiohttp.ClientSession,
        wake: asyncio.Event,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._deliveries = db[WEBHOOK_DELIVERIES]
        self._webhooks = db[WEBHOOKS]
        self._settings = settings
        self._policy = settings.webhook_target_policy
        self._metrics = metrics
        self._client = client
        self._wake = wake
        self._clock = clock
        self._in_flight: set[asyncio.Task[None]] = set()
        self._due_reported_at = float("-inf")
        self._circuits = db[WEBHOOK_CIRCUITS]
        # Circuit changes not stored yet (the breakers report them synchronously).
        self._circuit_changes: dict[str, tuple[CircuitState, datetime]] = {}

        def report(url: str, state: CircuitState) -> None:
            metrics.circuit_state.labels(url_label(url)).set(int(state))
            self._circuit_changes[url] = (state, utcnow())
            if state is not CircuitState.CLOSED:
                log.warning("webhook circuit %s for %s", state.name.lower(), url_label(url))

        self.breakers = Breakers(
            settings.webhook_circuit_failures, settings.webhook_circuit_cooloff_s, report
        )

    async def run(self, stop: asyncio.Event) -> None:
        async def until_woken(seconds: float) -> None:
            # A new delivery (wake) or stopping ends the wait early; a wake that
            # comes while the queue is read is kept for the next wait.
            waits = [asyncio.ensure_future(e.wait()) for e in (self._wake, stop)]
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()
            self._wake.clear()

        def worth_another(exc: BaseException) -> bool:
            return isinstance(exc, PyMongoError) and not stop.is_set()

        while not stop.is_set():
            with contextlib.suppress(PyMongoError):  # only once stopping
                async for attempt in retrying(
                    "poll webhook queue", retry_on=worth_another, max_s=30.0, sleep=until_woken
                ):
                    with attempt:
                        await self._fill()
                        await self._report_due()
                        await self._store_circuits()
            await until_woken(self._settings.webhook_poll_interval_s)
        await self._drain()

    async def _drain(self) -> None:
        """Let attempts under way finish; one cut short is due again when its lease ends."""
        if not self._in_flight:
            return
        _, unfinished = await asyncio.wait(
            self._in_flight, timeout=self._settings.webhook_timeout_s + 1
        )
        for task in unfinished:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _fill(self) -> None:
        while len(self._in_flight) < self._settings.webhook_concurrency:
            claimed = await self._claim()
            if claimed is None:
                return
            task = asyncio.create_task(self._deliver(claimed))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()  # room for another, and a circuit may have changed

    async def _claim(self) -> dict[str, Any] | None:
        now = utcnow()
        query: dict[str, Any] = {"status": PENDING, "next_attempt_at": {"$lte": now}}
        blocked = self.breakers.blocked(self._clock())
        if blocked:
            query["url"] = {"$nin": blocked}
        lease = now + timedelta(seconds=self._settings.webhook_timeout_s + LEASE_MARGIN_S)
        return await self._deliveries.find_one_and_update(
            query,
            {"$set": {"next_attempt_at": lease}},
            sort=[("next_attempt_at", 1)],
            return_document=ReturnDocument.BEFORE,
        )

    async def _store_circuits(self) -> None:
        """Store the circuits that changed, for the dashboard to show each webhook's."""
        changes, self._circuit_changes = self._circuit_changes, {}
        try:
            for url, (state, since) in changes.items():
                await self._circuits.update_one(
                    {"_id": url},
                    {"$set": {"state": state.name.lower(), "since": since}},
                    upsert=True,
                )
        except BaseException:
            # Kept for the next poll, unless a newer change came meanwhile.
            self._circuit_changes = changes | self._circuit_changes
            raise

    async def _report_due(self) -> None:
        if self._clock() - self._due_reported_at < DUE_REPORT_INTERVAL_S:
            return
        self._due_reported_at = self._clock()
        due = await self._deliveries.count_documents(
            {"status": PENDING, "next_attempt_at": {"$lte": utcnow()}}
        )
        self._metrics.due.set(due)

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        try:
            await self._attempt(delivery)
        except Exception:
            # MongoDB went away mid-attempt: the lease brings the delivery back.
            log.exception("webhook delivery %s interrupted", delivery["_id"])

    async def _attempt(self, delivery: dict[str, Any]) -> None:
        webhook = await self._webhooks.find_one({"_id": delivery["webhook_id"]})
        if webhook is None:
            await self._finish(delivery, {"status": CANCELLED, "last_error": "webhook deleted"})
            self._metrics.finished.labels(CANCELLED).inc()
            return
        url = delivery["url"]
        if not self.breakers.acquire(url, self._clock()):
            # Its circuit opened while this was being claimed: give it back untouched.
            await self._deliveries.update_one(
                {"_id": delivery["_id"], "status": PENDING},
                {"$set": {"next_attempt_at": delivery["next_attempt_at"]}},
            )
            return
        number = delivery["attempt_count"] + 1
        body = delivery["body"].encode()
        headers = delivery_headers(
            webhook["secret"],
            body,
            delivery["notification_id"],
            delivery["webhook_id"],
            number,
            int(time.time()),
        )
        started_at = utcnow()
        result = await attempt(
            self._client, url, body, headers, self._policy, self._settings.webhook_timeout_s
        )
        self.breakers.record(url, result.ok, self._clock())
        self._metrics.attempts.labels(result.outcome).inc()
        self._metrics.latency.observe(result.duration_s)
        await self._record(delivery, number, started_at, result)

    async def _record(
        self, delivery: dict[str, Any], number: int, started_at: datetime, result: AttemptResult
    ) -> None:
        entry: DeliveryAttempt = {
            "attempt": number,
            "at": started_at,
            "outcome": result.outcome,
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": round(result.duration_s * 1000, 1),
        }
        changes: dict[str, Any] = {"last_error": result.error}
        if result.ok:
            changes |= {"status": DELIVERED, "delivered_at": utcnow(), "next_attempt_at": None}
            self._metrics.finished.labels(DELIVERED).inc()
        elif number >= self._settings.webhook_max_attempts:
            changes |= {"status": FAILED, "next_attempt_at": None}
            self._metrics.finished.labels(FAILED).inc()
        else:
            delay = retry_delay(
                number,
                self._settings.webhook_backoff_initial_s,
                self._settings.webhook_backoff_max_s,
            )
            changes["next_attempt_at"] = utcnow() + timedelta(seconds=delay)
        await self._deliveries.update_one(
            {"_id": delivery["_id"], "status": PENDING},
            {"$set": changes, "$push": {"attempts": entry}, "$inc": {"attempt_count": 1}},
        )

    async def _finish(self, delivery: dict[str, Any], changes: dict[str, Any]) -> None:
        await self._deliveries.update_one(
            {"_id": delivery["_id"], "status": PENDING},
            {"$set": {**changes, "next_attempt_at": None}},
        )
