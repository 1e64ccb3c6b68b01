"""The consume loop every worker runs: fetch a batch, process it, commit after the writes.

Delivery is at-least-once: offsets are committed only after the handler's writes
succeeded, and handlers write idempotently, so a replay after a crash or a
rebalance changes nothing.

A handler may defer writes that every record makes again (the alerts worker's
learned baselines): it then has a ``checkpoint`` that writes them, and offsets
are committed only right after one, at most every ``checkpoint_interval_s``
(Kafka Streams' commit interval), whenever the partitions are idle, before they
are revoked and when the worker stops. A crash replays from the last checkpoint,
where the stored state is exact. A batch that fails makes such a handler let go
of everything since its last checkpoint, so the loop hands it those records again
before the batch (``_unsaved``): what it holds never misses a record it was given.

Failures are sorted in two:

* transient (MongoDB or Kafka unreachable): retried forever with exponential
  backoff while the assigned partitions are paused; good data never goes to the DLQ;
* permanent (the record can never be processed): the batch is retried up to
  ``max_retries`` times, then processed record by record so only the records
  that keep failing go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from tenacity import AsyncRetrying

from telemetry_common.infra.errors import is_transient
from telemetry_common.infra.kafka.dlq import DeadLetterPublisher
from telemetry_common.infra.kafka.producer import RenewableProducer, is_stale_producer
from telemetry_common.infra.kafka.progress import ConsumerProgress
from telemetry_common.infra.kafka.readings import request_id_of
from telemetry_common.infra.metrics import ConsumerMetrics
from telemetry_common.infra.ownership import PartitionsLost
from telemetry_common.infra.retry import retrying

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Consumed(Generic[T]):
    """A decoded record with the coordinates idempotent writes are keyed on."""

    partition: int
    offset: int
    value: T
    record: ConsumerRecord


Decode = Callable[[ConsumerRecord], T]
Handler = Callable[[list[Consumed[T]]], Awaitable[None]]
PartitionsChanged = Callable[[set[int]], Awaitable[None]]
# Writes what a handler deferred; returns the partitions a newer owner had claimed.
Checkpoint = Callable[[], Awaitable[set[int]]]


class RebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Tells a handler that keeps per-partition state which partitions it gained or lost.

    aiokafka runs these in its coordinator task, beside the consume loop, and
    starts fetching a newly assigned partition before ``on_partitions_assigned``
    returns: without a guard a batch could be folded into state that the
    callback then discards as stale (the aggregator once lost the device
    summaries of a first batch that way). So each callback holds ``handling``,
    the lock the loop holds while its handler runs: a batch sees the state
    either before a rebalance or after it, and a revocation waits for the batch
    in flight to be written.
    """

    def __init__(
        self,
        assigned: PartitionsChanged,
        revoked: PartitionsChanged,
        handling: asyncio.Lock,
        progress: ConsumerProgress | None = None,
    ):
        self._assigned = assigned
        self._revoked = revoked
        self._handling = handling
        self._progress = progress
        # Set by the loop of a checkpointing handler: what it handled of the revoked
        # partitions is checkpointed and committed before they go to another member.
        self.before_revoke: PartitionsChanged | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._handling:
            if self.before_revoke is not None:
                await self.before_revoke({tp.partition for tp in revoked})
            if self._progress is not None:
                # Assigned again, a partition is read from its last commit: known afresh.
                self._progress.forget(tp.partition for tp in revoked)
            await self._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._handling:
            await self._assigned({tp.partition for tp in assigned})


@dataclass
class RetryPolicy:
    max_retries: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


class ConsumerLoop(Generic[T]):
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        decode: Decode[T],
        handle: Handler[T],
        dead_letters: DeadLetterPublisher,
        producer: RenewableProducer,
        metrics: ConsumerMetrics,
        retry: RetryPolicy,
        max_records: int = 2000,
        handling: asyncio.Lock | None = None,
        progress: ConsumerProgress | None = None,
        checkpoint: Checkpoint | None = None,
        checkpoint_interval_s: float = 0.0,
    ):
        """``handling``: held while the handler runs; share it with the RebalanceHooks.
        ``progress``: kept up to date with how far each partition was handled.
        ``checkpoint``: a handler's deferred writes (see the module's docstring)."""
        self._consumer = consumer
        self.progress = progress or ConsumerProgress()
        self._handling = handling or asyncio.Lock()
        self._decode = decode
        self._handle = handle
        self._dead_letters = dead_letters
        self._producer = producer
        self._metrics = metrics
        self._retry = retry
        self._max_records = max_records
        self._committed: dict[TopicPartition, int] = {}
        self._checkpoint = checkpoint
        self._checkpoint_interval_s = checkpoint_interval_s if checkpoint is not None else 0.0
        # Per partition, handled but not committed: the offset to commit, and the
        # first record handled since the last commit (where a lost partition rewinds to).
        self._pending: dict[TopicPartition, int] = {}
        self._first_pending: dict[TopicPartition, int] = {}
        # With a checkpoint: the records handled since the last one, in order, and
        # whether a failure made the handler let go of them (handed again first).
        self._unsaved: list[Consumed[T]] = []
        self._replay_due = False
        self._saved_at = time.monotonic()
        self.healthy = True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self._consumer.getmany(timeout_ms=500, max_records=self._max_records)
            if not batch:
                if self._pending:
                    await self.save()  # idle: nothing gained by waiting longer
                await self._note_idle()
                self._report_lag()
                continue
            with self._metrics.batch_seconds.time():
                records = [r for partition_records in batch.values() for r in partition_records]
                self._metrics.records_consumed.inc(len(records))
                decoded, lost = await self._process(records)
                if lost:
                    self._rewind(lost, batch)
                    batch = {tp: rs for tp, rs in batch.items() if tp.partition not in lost}
                for tp, partition_records in batch.items():
                    self._first_pending.setdefault(tp, partition_records[0].offset)
                    self._pending[tp] = partition_records[-1].offset + 1
                self._note_handled(batch)
                if time.monotonic() - self._saved_at >= self._checkpoint_interval_s:
                    await self.save()
            self._report_done(records, decoded)
            self._report_lag()
        if self._pending:
            await self.save()

    async def save(self) -> None:
        """Checkpoint the handler's deferred writes, then commit what it has handled."""
        if self._replay_due:
            try:
                await self._handle_with_retries([])
            except PartitionsLost as exc:
                self._metrics.partitions_lost.inc(len(exc.partitions))
                self._rewind(exc.partitions)
        lost: set[int] = set()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        async for attempt in self._retrying("checkpoint", is_transient):
            with attempt:
                # Held per attempt: a rebalance may come in while a failing one waits.
                async with self._handling:
                    if self._replay_due:
                        # A rebalance between the replay and here found the handler
                        # failing again; what it let go is replayed at the next save.
                        return
                    lost = await self._run_checkpoint()
                    offsets = self._take_pending(lost)
        if lost:
            self._metrics.partitions_lost.inc(len(lost))
            self._rewind(lost)
        # Outside the lock: a commit may wait for a rebalance whose callbacks need it.
        await self._commit(offsets)

    async def save_before_revoke(self, partitions: set[int]) -> None:
        """What ``RebalanceHooks`` runs (the handling lock held) before partitions go:
        one checkpoint and commit. If it fails, nothing of theirs is committed, and the
        member that takes them replays from the last commit onto the stored state."""
        revoked = [tp for tp in self._pending if tp.partition in partitions]
        if not self._replay_due:
            try:
                lost = await self._run_checkpoint()
                offsets = self._take_pending(lost, partitions)
                if offsets:
                    await self._consumer.commit(offsets)
                    self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
                self._rewind(lost)
            except Exception as exc:
                log.warning(
                    "checkpoint before revocation failed; their records are replayed "
                    "from the last commit: %r",
                    exc,
                )
        for tp in revoked:
            self._pending.pop(tp, None)
            self._first_pending.pop(tp, None)
        self._unsaved = [item for item in self._unsaved if item.partition not in partitions]
        if not self._unsaved:
            self._replay_due = False

    async def _run_checkpoint(self) -> set[int]:
        if self._checkpoint is None:
            return set()
        with self._metrics.checkpoint_seconds.time():
            return await self._checkpoint()

    def _take_pending(
        self, lost: set[int], only: set[int] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets a checkpoint made safe to commit (of ``only`` these partitions),
        no longer pending."""
        taken = [
            tp
            for tp in self._pending
            if tp.partition not in lost and (only is None or tp.partition in only)
        ]
        offsets = {tp: OffsetAndMetadata(self._pending.pop(tp), "") for tp in taken}
        for tp in taken:
            self._first_pending.pop(tp, None)
        if only is None:
            self._unsaved.clear()
            self._saved_at = time.monotonic()
        else:
            self._unsaved = [item for item in self._unsaved if item.partition not in only]
        return offsets

    def _report_done(self, records: list[ConsumerRecord], decoded: list[Consumed[T]]) -> None:
        # The record's timestamp is when ingestion-api published it (CreateTime),
        # so this is the reading's latency from the API to this worker's commit.
        now_ms = time.time() * 1000
        for record in records:
            self._metrics.end_to_end_seconds.observe(max(now_ms - record.timestamp, 0) / 1000)
        if log.isEnabledFor(logging.DEBUG):
            for item in decoded:
                log.debug(
                    "processed",
                    extra={
                        "request_id": request_id_of(item.record.headers),
                        "event_id": getattr(item.value, "event_id", None),
                        "partition": item.partition,
                        "offset": item.offset,
                    },
                )

    async def _process(
        self, records: list[ConsumerRecord]
    ) -> tuple[list[Consumed[T]], frozenset[int]]:
        """The decoded records, and the partitions the handler found another worker owns."""
        decoded: list[Consumed[T]] = []
        for record in records:
            try:
                value = self._decode(record)
            except Exception as exc:
                # Decoding is pure: a record that fails it fails the same way every
                # time, so retrying is waste and stopping the worker would block
                # the partition behind it.
                await self._dead_letter(record, f"undecodable: {exc}", attempts=1)
                continue
            decoded.append(Consumed(record.partition, record.offset, value, record))
        lost: frozenset[int] = frozenset()
        if decoded:
            try:
                await self._handle_with_retries(decoded)
            except PartitionsLost as exc:
                self._metrics.partitions_lost.inc(len(exc.partitions))
                log.warning("%s; their records are left to the new owner", exc)
                lost = exc.partitions
        return decoded, lost

    def _rewind(
        self,
        lost: Collection[int],
        batch: dict[TopicPartition, list[ConsumerRecord]] | None = None,
    ) -> None:
        """Forget what was handled of lost partitions since their last commit, and fetch
        it again should Kafka still assign them here (the handler let go of their state).

        Normally the group has already moved them and the next poll revokes them; if
        not, nothing past the last commit may be skipped.
        """
        if not lost:
            return
        assigned = self._consumer.assignment()
        batch_starts = {tp: records[0].offset for tp, records in (batch or {}).items()}
        for tp in {*batch_starts, *self._pending}:
            if tp.partition not in lost:
                continue
            start = self._first_pending.pop(tp, batch_starts.get(tp))
            self._pending.pop(tp, None)
            if start is not None and tp in assigned:
                self._consumer.seek(tp, start)
        self._unsaved = [item for item in self._unsaved if item.partition not in lost]

    def _retrying(self, operation: str, retry_on: Callable[[BaseException], bool]) -> AsyncRetrying:
        return retrying(
            operation,
            retry_on=retry_on,
            initial_s=self._retry.initial_backoff_s,
            max_s=self._retry.max_backoff_s,
            sleep=self._paused_wait,
        )

    async def _handle_with_retries(self, items: list[Consumed[T]]) -> None:
        """Handle the items, after what a failure made the handler let go of."""
        # Waiting helps a transient failure, however long it lasts; any other is
        # given max_retries attempts in case it was not what it seemed.
        failures = 0

        def worth_another(exc: BaseException) -> bool:
            if isinstance(exc, PartitionsLost):
                return False
            return is_transient(exc) or failures < self._retry.max_retries

        try:
            async for attempt in self._retrying("handle batch", worth_another):
                with attempt:
                    try:
                        # Held per attempt, not across the waits between them: a
                        # rebalance may happen while a failing batch waits (_paused_wait).
                        async with self._handling:
                            await self._handle_after_replay(items)
                    except PartitionsLost:
                        raise
                    except Exception as exc:
                        if self._checkpoint is not None:
                            # It let go of everything since its last checkpoint.
                            self._replay_due = True
                        await self._renew_if_stale(exc)
                        if is_transient(exc):
                            self.healthy = False
                            self._metrics.transient_failures.inc()
                        else:
                            failures += 1
                        raise
            self.healthy = True
            return
        except PartitionsLost:
            raise
        except Exception as exc:
            failed = exc
        if not items:
            # Records handled once fail when handed again: a restart replays them from
            # the last commit onto the stored state, which is all that is left to try.
            raise failed
        if len(items) > 1:
            # Find the records at fault instead of dead-lettering good ones.
            log.warning("batch failed %d times; isolating records: %r", failures, failed)
            if self._replay_due:
                await self._handle_with_retries([])  # so that each record is judged alone
            for item in items:
                await self._handle_with_retries([item])
            return
        await self._dead_letter(items[0].record, f"{type(failed).__name__}: {failed}", failures)

    async def _handle_after_replay(self, items: list[Consumed[T]]) -> None:
        """(The handling lock held.) A PartitionsLost names the partitions lost in
        either; everything else was handled."""
        lost: set[int] = set()
        if self._replay_due:
            self._metrics.replayed_records.inc(len(self._unsaved))
            try:
                if self._unsaved:
                    await self._handle(self._unsaved)
            except PartitionsLost as exc:
                lost |= exc.partitions
            self._replay_due = False
        todo = [item for item in items if item.partition not in lost]
        try:
            if todo:
                await self._handle(todo)
        except PartitionsLost as exc:
            lost |= exc.partitions
        if self._checkpoint is not None:
            self._unsaved.extend(item for item in todo if item.partition not in lost)
        if lost:
            raise PartitionsLost(lost)

    async def _dead_letter(self, record: ConsumerRecord, reason: str, attempts: int) -> None:
        async for attempt in self._retrying("publish dead letter", is_transient):
            with attempt:
                try:
                    await self._dead_letters.publish(record, reason, attempts)
                except Exception as exc:
                    await self._renew_if_stale(exc)
                    raise
        short_reason = reason.split(":", 1)[0][:40]
        self._metrics.records_dead_lettered.labels(short_reason).inc()
        log.error(
            "dead-lettered %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            extra={"request_id": request_id_of(record.headers)},
        )

    async def _renew_if_stale(self, exc: BaseException) -> None:
        if not is_stale_producer(exc):
            return
        try:
            await self._producer.renew()
        except Exception as renew_exc:
            # Kafka is away; the next failure of the retried batch tries again.
            log.warning("could not renew the Kafka producer yet: %r", renew_exc)

    async def _paused_wait(self, seconds: float) -> None:
        """Wait without fetching, yet keep polling so the group does not evict this member."""
        consumer = self._consumer
        paused = consumer.assignment()
        consumer.pause(*paused)
        self._metrics.paused.set(1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            while (remaining := deadline - loop.time()) > 0:
                polled = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
                # Partitions assigned by a rebalance during the wait are not paused;
                # rewind what they returned so no record is skipped.
                for tp, records in polled.items():
                    consumer.seek(tp, records[0].offset)
                    consumer.pause(tp)
                await asyncio.sleep(min(0.05, max(deadline - loop.time(), 0)))
        finally:
            consumer.resume(*consumer.assignment())
            self._metrics.paused.set(0)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if not offsets:
            return
        try:
            async for attempt in retrying(
                "commit offsets",
                retry_on=lambda exc: (
                    not isinstance(exc, CommitFailedError | IllegalStateError) and is_transient(exc)
                ),
                initial_s=self._retry.initial_backoff_s,
                max_s=self._retry.max_backoff_s,
            ):
                with attempt:
                    await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced: the new owner replays from the last commit,
            # and every write is idempotent, so nothing is lost or counted twice.
            self._metrics.commit_failures.inc()
            log.warning("commit refused after rebalance: %s", exc)
            return
        self._committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def _note_handled(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        for tp, records in batch.items():
            newest = max(record.timestamp for record in records)
            end = self._consumer.highwater(tp)
            self.progress.handled(tp.partition, newest, records[-1].offset + 1, end)

    async def _note_idle(self) -> None:
        consumer = self._consumer
        for tp in consumer.assignment():
            # Revoked meanwhile (the awaits let a rebalance in): it is known afresh later.
            with contextlib.suppress(IllegalStateError, AssertionError):
                end = consumer.highwater(tp)
                if end is not None:  # fetched at least once, so its position is valid
                    self.progress.idle(tp.partition, await consumer.position(tp), end)

    def _report_lag(self) -> None:
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            committed = self._committed.get(tp)
            if highwater is not None and committed is not None:
                self._metrics.lag.labels(str(tp.partition)).set(max(highwater - committed, 0))
