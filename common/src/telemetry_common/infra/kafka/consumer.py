"""The consume loop every worker runs: fetch a batch, process it, commit after the writes.

Delivery is at-least-once: offsets are committed only after the handler's writes
succeeded, and handlers write idempotently, so a replay after a crash or a
rebalance changes nothing.

A handler may defer writes that every record makes again (the alerts worker's
learned baselines): it then has a ``checkpoint`` that writes them, run every
``checkpoint_interval_s`` (Kafka Streams' commit interval), whenever the
partitions are idle, before they are revoked and when the worker stops. Offsets
are still committed after every batch, so the lag that operators and the
autoscaler read stays true, but each commit names in its metadata where a
successor must start: the first record handled since the last checkpoint
(``replay-from <offset>``). A member assigned the partition seeks there, and
replays onto the stored state, which is exact up to that record.

A batch that fails makes such a handler let go of everything since its last
checkpoint; the loop then seeks back to the checkpoint and goes on *carefully*
(a checkpoint after every batch, and after every record it isolates) until it is
past the failed batch, so each retry starts from exactly what is stored.

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
from aiokafka.admin import AIOKafkaAdminClient
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
# Where a commit's metadata says a successor starts (the offset follows).
REPLAY_FROM = "replay-from "


@dataclass(frozen=True)
class Checkpointing:
    """A handler's checkpoint and where to read the group's commits (their metadata)."""

    checkpoint: Checkpoint
    interval_s: float
    bootstrap_servers: str
    group_id: str


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
        # Set by the loop of a checkpointing handler: the revoked partitions are
        # checkpointed and committed before they go to another member, and assigned
        # ones are moved to where their last commit says to replay from.
        self.before_revoke: Callable[[list[TopicPartition]], Awaitable[None]] | None = None
        self.after_assign: Callable[[list[TopicPartition]], None] | None = None

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._handling:
            if self.before_revoke is not None:
                await self.before_revoke(revoked)
            if self._progress is not None:
                # Assigned again, a partition is read from its last commit: known afresh.
                self._progress.forget(tp.partition for tp in revoked)
            await self._revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._handling:
            if self.after_assign is not None:
                self.after_assign(assigned)
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
        checkpointing: Checkpointing | None = None,
    ):
        """``handling``: held while the handler runs; share it with the RebalanceHooks.
        ``progress``: kept up to date with how far each partition was handled.
        ``checkpointing``: a handler's deferred writes (see the module's docstring)."""
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
        self._checkpointing = checkpointing
        self._admin: AIOKafkaAdminClient | None = None
        # Per partition: the offset after the last record handled, and whether that
        # is committed yet.
        self._position: dict[TopicPartition, int] = {}
        self._uncommitted: set[TopicPartition] = set()
        # With checkpointing: the first record handled since the last checkpoint;
        # after a failure, the last offset to go through carefully; assigned
        # partitions not moved to their replay point yet.
        self._replay_from: dict[TopicPartition, int] = {}
        self._careful_until: dict[TopicPartition, int] = {}
        self._unsought: set[TopicPartition] = set()
        self._saved_at = time.monotonic()
        self.healthy = True

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                if self._unsought:
                    async with self._handling:
                        await self._seek_replay_points([])
                batch = await self._consumer.getmany(timeout_ms=500, max_records=self._max_records)
                if not batch:
                    if self._replay_from:
                        await self.save()  # idle: nothing gained by waiting longer
                    await self._note_idle()
                    self._report_lag()
                    continue
                with self._metrics.batch_seconds.time():
                    await self._run_batch(batch)
                self._report_lag()
            if self._replay_from or self._uncommitted:
                await self.save()
        finally:
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    await self._admin.close()

    async def _run_batch(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        records = [r for partition_records in batch.values() for r in partition_records]
        self._metrics.records_consumed.inc(len(records))
        careful = self._checkpointing is None or bool(self._careful_until)
        decoded, dropped = await self._process(records, careful)
        batch = {tp: rs for tp, rs in batch.items() if tp.partition not in dropped}
        for tp, partition_records in batch.items():
            if self._checkpointing is not None:
                self._replay_from.setdefault(tp, partition_records[0].offset)
            self._position[tp] = partition_records[-1].offset + 1
            self._uncommitted.add(tp)
            if self._position[tp] > self._careful_until.get(tp, -1):
                self._careful_until.pop(tp, None)
        self._note_handled(batch)
        interval = 0.0 if self._checkpointing is None else self._checkpointing.interval_s
        if careful or time.monotonic() - self._saved_at >= interval:
            await self.save()
        else:
            await self._commit(self._progress_offsets())
        self._report_done(records, decoded)

    def _progress_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """What was handled since the last commit, each with where to replay from."""
        offsets = {
            tp: OffsetAndMetadata(
                self._position[tp],
                f"{REPLAY_FROM}{self._replay_from[tp]}" if tp in self._replay_from else "",
            )
            for tp in self._uncommitted
        }
        self._uncommitted.clear()
        return offsets

    async def save(self) -> None:
        """Checkpoint the handler's deferred writes, then commit what it has handled."""
        lost: set[int] = set()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        async for attempt in self._retrying("checkpoint", is_transient):
            with attempt:
                # Held per attempt: a rebalance may come in while a failing one waits.
                async with self._handling:
                    lost = await self._run_checkpoint()
                    offsets = self._checkpointed_offsets(lost)
        if lost:
            self._metrics.partitions_lost.inc(len(lost))
            self._rewind(lost)
        # Outside the lock: a commit may wait for a rebalance whose callbacks need it.
        await self._commit(offsets)

    def _checkpointed_offsets(
        self, lost: Collection[int]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """After a checkpoint: everything handled is stored, nothing to replay."""
        done = (self._uncommitted | set(self._replay_from)) - {
            tp for tp in self._position if tp.partition in lost
        }
        offsets = {tp: OffsetAndMetadata(self._position[tp], "") for tp in done}
        self._uncommitted -= done
        for tp in done:
            self._replay_from.pop(tp, None)
        self._saved_at = time.monotonic()
        return offsets

    async def _run_checkpoint(self) -> set[int]:
        if self._checkpointing is None:
            return set()
        with self._metrics.checkpoint_seconds.time():
            return await self._checkpointing.checkpoint()

    async def save_before_revoke(self, revoked: list[TopicPartition]) -> None:
        """What ``RebalanceHooks`` runs (the handling lock held) before partitions go:
        one checkpoint and a commit saying nothing is left to replay. If that fails,
        the last commit still says where the next owner replays from."""
        try:
            lost = await self._run_checkpoint()
            offsets = self._checkpointed_offsets(lost)
            if offsets:
                await self._consumer.commit(offsets)
                self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
        except Exception as exc:
            log.warning("checkpoint before revocation failed; the next owner replays: %r", exc)
        for tp in revoked:
            for kept in (self._position, self._replay_from, self._careful_until):
                kept.pop(tp, None)
            self._uncommitted.discard(tp)
            self._unsought.discard(tp)

    def note_assigned(self, assigned: list[TopicPartition]) -> None:
        """(``RebalanceHooks.after_assign``.) Moved to their replay points before any of
        their records is handled."""
        self._unsought.update(assigned)

    async def _seek_replay_points(self, items: list[Consumed[T]]) -> set[int]:
        """(The handling lock held.) Move newly assigned partitions to where their last
        commit says to replay from; return those whose records in hand (``items``,
        fetched from the committed offset) must be fetched again instead."""
        if not self._unsought or self._checkpointing is None:
            self._unsought.clear()
            return set()
        wanted = list(self._unsought)
        first_in_hand: dict[int, int] = {}
        for item in items:
            first_in_hand.setdefault(item.partition, item.offset)
        try:
            committed = await self._commits_of(wanted)
        except Exception as exc:
            # Kafka away: the records in hand wait, fetched again, until it answers.
            log.warning("could not read where to replay from: %r", exc)
            for tp in wanted:
                if tp.partition in first_in_hand:
                    self._consumer.seek(tp, first_in_hand[tp.partition])
            return set(first_in_hand)
        refetch: set[int] = set()
        assigned = self._consumer.assignment()
        for tp in wanted:
            meta = committed.get(tp)
            if tp not in assigned or meta is None or not meta.metadata.startswith(REPLAY_FROM):
                continue
            replay_from = int(meta.metadata.removeprefix(REPLAY_FROM))
            start = first_in_hand.get(tp.partition, meta.offset)
            if replay_from < start:
                log.info(
                    "partition %d: replaying from its last checkpoint at %d (committed %d)",
                    tp.partition,
                    replay_from,
                    meta.offset,
                )
                self._consumer.seek(tp, replay_from)
                self._metrics.replayed_records.inc(start - replay_from)
                refetch.add(tp.partition)
        self._unsought.difference_update(wanted)
        return refetch & set(first_in_hand)

    async def _commits_of(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        assert self._checkpointing is not None
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._checkpointing.bootstrap_servers)
            await admin.start()
            self._admin = admin
        found: dict[
            TopicPartition, OffsetAndMetadata
        ] = await self._admin.list_consumer_group_offsets(
            self._checkpointing.group_id, partitions=partitions
        )
        return found

    def _report_done(self, records: list[ConsumerRecord], decoded: list[Consumed[T]]) -> None:
        # The record's timestamp is when ingestion-api published it (CreateTime),
        # so this is the reading's latency from the API to this worker having handled it.
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
        self, records: list[ConsumerRecord], careful: bool
    ) -> tuple[list[Consumed[T]], set[int]]:
        """The decoded records, and the partitions whose records in hand were not all
        handled (lost to another worker, or fetched again): not to be committed."""
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
        if not decoded:
            return decoded, set()
        try:
            if careful:
                return decoded, await self._handle_with_retries(decoded)
            return decoded, await self._handle_or_rewind(decoded)
        except PartitionsLost as exc:
            self._metrics.partitions_lost.inc(len(exc.partitions))
            log.warning("%s; their records are left to the new owner", exc)
            self._rewind(exc.partitions, decoded)
            for tp in [tp for tp in self._careful_until if tp.partition in exc.partitions]:
                del self._careful_until[tp]
            return decoded, set(exc.partitions)

    async def _handle_or_rewind(self, items: list[Consumed[T]]) -> set[int]:
        """Handle the batch once; if it fails, seek back to the last checkpoint (the
        handler let go of everything since) and go on carefully. Returns the
        partitions whose records are fetched again."""
        try:
            async with self._handling:
                refetch = await self._seek_replay_points(items)
                await self._handle([item for item in items if item.partition not in refetch])
            self.healthy = True
            return refetch
        except PartitionsLost:
            raise
        except Exception as exc:
            await self._note_failure(exc)
            log.warning("batch failed; going back to the last checkpoint: %r", exc)
            partitions = {item.partition for item in items}
            self._rewind(partitions | {tp.partition for tp in self._replay_from}, items)
            for item in items:
                tp = TopicPartition(item.record.topic, item.partition)
                self._careful_until[tp] = max(self._careful_until.get(tp, -1), item.offset)
            return partitions

    def _rewind(self, partitions: Collection[int], items: list[Consumed[T]] | None = None) -> None:
        """Seek partitions back to their last checkpoint (their first record handled
        since, or the first of ``items``), forgetting what was handled of them since."""
        if not partitions:
            return
        assigned = self._consumer.assignment()
        starts: dict[TopicPartition, int] = {}
        for item in items or ():
            starts.setdefault(TopicPartition(item.record.topic, item.partition), item.offset)
        for tp in {*starts, *self._replay_from}:
            if tp.partition not in partitions:
                continue
            start = self._replay_from.pop(tp, starts.get(tp))
            if start is None:
                continue
            self._metrics.replayed_records.inc(max(self._position.get(tp, start) - start, 0))
            self._position[tp] = start
            self._uncommitted.discard(tp)
            if tp in assigned:
                self._consumer.seek(tp, start)

    def _retrying(self, operation: str, retry_on: Callable[[BaseException], bool]) -> AsyncRetrying:
        return retrying(
            operation,
            retry_on=retry_on,
            initial_s=self._retry.initial_backoff_s,
            max_s=self._retry.max_backoff_s,
            sleep=self._paused_wait,
        )

    async def _note_failure(self, exc: BaseException) -> None:
        await self._renew_if_stale(exc)
        if is_transient(exc):
            self.healthy = False
            self._metrics.transient_failures.inc()

    async def _handle_with_retries(self, items: list[Consumed[T]]) -> set[int]:
        """Handle the items, retrying them alone: the handler holds nothing of them
        between attempts (it writes at every call, or was checkpointed just before).
        Returns the partitions whose records are fetched again."""
        # Waiting helps a transient failure, however long it lasts; any other is
        # given max_retries attempts in case it was not what it seemed.
        failures = 0
        refetch: set[int] = set()

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
                            refetch |= await self._seek_replay_points(items)
                            todo = [item for item in items if item.partition not in refetch]
                            if todo:
                                await self._handle(todo)
                    except PartitionsLost:
                        raise
                    except Exception as exc:
                        await self._note_failure(exc)
                        if not is_transient(exc):
                            failures += 1
                        raise
            self.healthy = True
            return refetch
        except PartitionsLost:
            raise
        except Exception as exc:
            failed = exc
        if len(items) > 1:
            # Find the records at fault instead of dead-lettering good ones.
            log.warning("batch failed %d times; isolating records: %r", failures, failed)
            for item in items:
                refetch |= await self._handle_with_retries([item])
                if self._checkpointing is not None:
                    # So that the next record's retries start from what is stored.
                    await self.save()
            return refetch
        await self._dead_letter(items[0].record, f"{type(failed).__name__}: {failed}", failures)
        return refetch

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
