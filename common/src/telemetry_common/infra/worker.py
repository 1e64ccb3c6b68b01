"""Start-up, shutdown and wiring shared by the consuming workers.

A worker is a decode function and a batch handler; this module connects them
to Kafka, MongoDB, the HTTP side and signals, so each worker's own package
holds only what it does with a reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import uvloop
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from telemetry_common.infra.background import BackgroundTasks
from telemetry_common.infra.garbage import YoungGarbage
from telemetry_common.infra.kafka.consumer import (
    Checkpointing,
    Consumed,
    ConsumerLoop,
    Decode,
    Handler,
    RebalanceHooks,
    RetryPolicy,
)
from telemetry_common.infra.kafka.dlq import DeadLetterPublisher
from telemetry_common.infra.kafka.producer import RenewableProducer, build_producer
from telemetry_common.infra.kafka.progress import ConsumerProgress
from telemetry_common.infra.metrics import ConsumerMetrics
from telemetry_common.infra.mongo import Database, connect, ensure_indexes
from telemetry_common.infra.ownership import PartitionOwnership
from telemetry_common.infra.retry import retrying
from telemetry_common.infra.settings import WorkerSettings
from telemetry_common.infra.worker_http import serve, worker_app

log = logging.getLogger(__name__)

T = TypeVar("T")

# Time a stopping worker gives its current batch before abandoning it; an
# abandoned batch is uncommitted and is replayed idempotently after restart.
SHUTDOWN_GRACE_S = 10.0


# How often a handler's ``tick`` runs (what it judges on time rather than on records).
TICK_S = 1.0


@dataclass
class WorkerContext:
    settings: WorkerSettings
    db: Database
    producer: RenewableProducer
    ownership: PartitionOwnership
    # How far each partition has been handled (``kafka/progress.py``).
    progress: ConsumerProgress


def owner_name(service: str) -> str:
    """Who claimed a partition, for an operator reading partition_owners."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


async def start_with_retry(
    what: str, start: Callable[[], Awaitable[Any]], stop: asyncio.Event
) -> None:
    # Anything: a client that cannot start yet is retried until the process is told to stop.
    async for attempt in retrying(f"start {what}", retry_on=lambda _: not stop.is_set()):
        with attempt:
            await start()


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM (Kubernetes, docker stop) and Ctrl-C set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    return stop


def subscribe(
    settings: WorkerSettings,
    topic: str,
    group_id: str,
    name: str,
    listener: RebalanceHooks | None = None,
) -> AIOKafkaConsumer:
    """A consumer of ``topic`` that commits only what its handler has written."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        client_id=name,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.consumer_max_records,
        # A worker behind lets its batches grow to consumer_max_records; the
        # default 1 MB a partition would cap a fetch near 5,000 readings each.
        max_partition_fetch_bytes=settings.consumer_fetch_partition_bytes,
        # Waiting out a MongoDB outage keeps polling (paused), but a single slow
        # batch may still take a while on a cold database.
        max_poll_interval_ms=600_000,
    )
    consumer.subscribe([topic], listener=listener)
    return consumer


def consume_loop(
    name: str,
    settings: WorkerSettings,
    consumer: AIOKafkaConsumer,
    producer: RenewableProducer,
    decode: Decode[T],
    handle: Handler[T],
    metrics: ConsumerMetrics,
    handling: asyncio.Lock | None = None,
    progress: ConsumerProgress | None = None,
    checkpointing: Checkpointing | None = None,
) -> ConsumerLoop[T]:
    """The commit-after-write loop with the settings' retry policy and the DLQ."""
    return ConsumerLoop(
        consumer,
        decode,
        handle,
        DeadLetterPublisher(producer, settings.dlq_topic, name),
        producer,
        metrics,
        RetryPolicy(
            settings.max_retries,
            settings.retry_backoff_initial_s,
            settings.retry_backoff_max_s,
        ),
        max_records=settings.consumer_max_records,
        handling=handling,
        progress=progress,
        checkpointing=checkpointing,
    )


async def _tick_forever(
    name: str, tick: Callable[[], Awaitable[None]], after: Callable[[], None]
) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        try:
            await tick()
        except Exception:
            # MongoDB away, say: the next tick judges again from the same state.
            log.warning("%s: tick failed", name, exc_info=True)
        finally:
            after()


async def run_worker(
    *,
    name: str,
    settings: WorkerSettings,
    group_id: str,
    port: int,
    registry: CollectorRegistry,
    decode: Decode[T],
    handler_for: Callable[[WorkerContext], Handler[T]],
    stop: asyncio.Event | None = None,
    raw_retention: timedelta | None = None,
    merged_resolutions: Iterable[str] = (),
    checkpoint_interval_s: float = 0.0,
) -> None:
    """``checkpoint_interval_s``: how often a handler with a ``checkpoint`` writes what
    it deferred, and offsets are committed (``kafka/consumer.py``)."""
    if stop is None:
        # Run as a process; an embedding caller (a test) passes its own event instead.
        stop = stop_on_signals()

    mongo = connect(settings.mongo_url, name)
    db = mongo[settings.mongo_db]
    producer = build_producer(settings.kafka_bootstrap_servers, client_id=name)
    consumer: AIOKafkaConsumer | None = None
    metrics = ConsumerMetrics(registry)
    consumer_loop: ConsumerLoop[T] | None = None
    started = {"kafka": False, "mongo": False}
    progress = ConsumerProgress()
    background = BackgroundTasks()
    garbage = YoungGarbage()

    def health() -> dict[str, object]:
        ok = all(started.values()) and consumer_loop is not None and consumer_loop.healthy
        return {"status": "ok" if ok else "degraded", "service": name, **started}

    server, server_task = await serve(worker_app(name, registry, health), settings.host, port)
    try:
        await start_with_retry(
            "MongoDB", lambda: ensure_indexes(db, raw_retention, merged_resolutions), stop
        )
        started["mongo"] = True
        await start_with_retry("Kafka producer", producer.start, stop)
        ownership = PartitionOwnership(
            db, name, group_id, settings.telemetry_topic, owner_name(name)
        )
        context = WorkerContext(settings, db, producer, ownership, progress)
        handle = handler_for(context)

        async def handle_then_collect(items: list[Consumed[T]]) -> None:
            try:
                await handle(items)
            finally:
                garbage.after_batch()

        # Optional parts of a handler: told of rebalances, ticked every TICK_S, and
        # writing some of its state at checkpoints only.
        assigned = getattr(handle, "partitions_assigned", None)
        revoked = getattr(handle, "partitions_revoked", None)
        tick = getattr(handle, "tick", None)
        checkpoint = getattr(handle, "checkpoint", None)
        handling = asyncio.Lock()
        listener = (
            RebalanceHooks(assigned, revoked, handling, progress) if assigned and revoked else None
        )
        consumer = subscribe(settings, settings.telemetry_topic, group_id, name, listener)
        consumer_loop = consume_loop(
            name,
            settings,
            consumer,
            producer,
            decode,
            handle_then_collect,
            metrics,
            handling,
            progress,
            checkpointing=Checkpointing(
                checkpoint, checkpoint_interval_s, settings.kafka_bootstrap_servers, group_id
            )
            if checkpoint is not None
            else None,
        )
        if listener is not None and checkpoint is not None:
            # Before the consumer starts: the first assignment may come at once.
            listener.before_revoke = consumer_loop.save_before_revoke
            listener.after_assign = consumer_loop.note_assigned
        await start_with_retry("Kafka consumer", consumer.start, stop)
        started["kafka"] = True
        if tick is not None:
            # Also when no batch comes for a while: a tick's garbage is collected too.
            ticks = _tick_forever(name, tick, garbage.after_batch)
            background.start(ticks, name=f"{name} tick")
        log.info("%s consuming %s as group %s", name, settings.telemetry_topic, group_id)
        run_task = asyncio.create_task(consumer_loop.run(stop))
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if run_task.done():
            stop_task.cancel()
            run_task.result()
        else:
            done, _ = await asyncio.wait({run_task}, timeout=SHUTDOWN_GRACE_S)
            if not done:
                run_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run_task
    finally:
        log.info("%s stopping", name)
        garbage.stop()
        await background.stop()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        with contextlib.suppress(Exception):
            await producer.stop()
        await mongo.close()
        server.should_exit = True
        await server_task


def run_process(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker process on uvloop, as uvicorn runs the APIs: one event loop
    everywhere, and the cheaper one for a consume loop's many small awaits."""
    uvloop.run(main)
