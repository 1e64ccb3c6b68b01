"""Idempotent writes of folded state: first copies of events, per-partition offset
watermarks and versioned replaces.

A device may send a reading twice (a retry after a timeout), and both copies
reach Kafka at different positions. Storing each event once, with the position
that carried it (``_src``), tells a second copy (counted already) from a replay
of the same record after a crash (which the watermarks below settle).

A consumer that folds records into stored documents keeps, in each document, the
highest offset folded per partition (``_applied``), so a replayed offset is never
folded twice, and a version (``_v``) that each write checks, so of two consumers
briefly owning one partition during a rebalance only one writes a given version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError
from pymongo.results import BulkWriteResult

from telemetry_common.infra.mongo import Collection
from telemetry_common.infra.ownership import not_newer_than

DUPLICATE_KEY = 11000

T = TypeVar("T")


def source_position(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


async def insert_first_copies(collection: Collection, docs: Iterable[dict[str, Any]]) -> set[str]:
    """Insert documents keyed by event id, each with its ``_src``; return the ids that are
    second copies: stored already from another position.

    ``docs`` may be a generator: each WRITE_CHUNK is built just before it is sent, a
    few in flight, so the server stores one chunk while this process builds the
    next and a large batch's documents are never all in memory at once.
    """
    sources: dict[str, str] = {}

    async def insert(chunk: list[dict[str, Any]]) -> set[str]:
        ids = [doc["_id"] for doc in chunk]
        duplicates = await _duplicate_ids(collection.insert_many(chunk, ordered=False), ids)
        for doc in chunk:
            if doc["_id"] in duplicates:
                sources[doc["_id"]] = doc["_src"]
        return duplicates

    duplicate_ids: set[str] = set()
    for found in await _pipelined(insert, _batched(docs, WRITE_CHUNK)):
        duplicate_ids |= found
    if not duplicate_ids:
        return set()
    # Same event, same position: a replay of a record whose writes may not all
    # have happened; it is processed again (the watermarks decide).
    return {
        doc["_id"]
        async for doc in collection.find({"_id": {"$in": list(duplicate_ids)}}, {"_src": 1})
        if doc.get("_src") != sources[doc["_id"]]
    }


@dataclass(slots=True)
class Watermarks:
    """Highest offset applied per partition, as stored beside each folded document."""

    by_partition: dict[str, int] = field(default_factory=dict)

    def is_new(self, partition: int, offset: int) -> bool:
        return offset > self.by_partition.get(str(partition), -1)

    def advance(self, partition: int, offset: int) -> None:
        key = str(partition)
        self.by_partition[key] = max(self.by_partition.get(key, -1), offset)

    def take(self, partition: int, offset: int) -> bool:
        """Advance to ``offset`` if it is new (``is_new``); whether it was."""
        key = str(partition)
        if offset <= self.by_partition.get(key, -1):
            return False
        self.by_partition[key] = offset
        return True


# Measured on secantusd: one `$in` of 10,000 stored ids takes about three times
# as long as 20 finds of 500, and a few requests in flight keep the server busy
# while this process builds and encodes the next.
FIND_CHUNK = 500
WRITE_CHUNK = 1000
IN_FLIGHT = 4


async def _bounded(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``calls`` with at most IN_FLIGHT of them running at once."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


async def _pipelined(
    send: Callable[[list[Any]], Awaitable[T]], pieces: Iterable[list[Any]]
) -> list[T]:
    """``send`` each chunk as it is made, with at most IN_FLIGHT of them running at once."""
    in_flight: set[asyncio.Future[T]] = set()
    results: list[T] = []
    try:
        for chunk in pieces:
            if len(in_flight) >= IN_FLIGHT:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                results += [task.result() for task in done]
            in_flight.add(asyncio.ensure_future(send(chunk)))
            await asyncio.sleep(0)  # let it put its request on the wire before making more
        results += [await task for task in asyncio.as_completed(in_flight)]
    except BaseException:
        # The others are left to finish or fail by themselves, never cancelled:
        # pymongo's async pool can deadlock on a cancelled checkout (after a
        # MongoDB restart, every later operation of the process waited forever).
        await asyncio.gather(*in_flight, return_exceptions=True)
        raise
    return results


def chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def find_by_id(collection: Collection, ids: list[str]) -> dict[str, dict[str, Any]]:
    async def find(chunk: list[str]) -> list[dict[str, Any]]:
        return [doc async for doc in collection.find({"_id": {"$in": chunk}})]

    found = await _bounded([find(chunk) for chunk in chunks(ids, FIND_CHUNK)])
    return {doc["_id"]: doc for docs in found for doc in docs}


async def insert_absent(collection: Collection, docs: list[dict[str, Any]]) -> set[str]:
    """Insert the documents whose ``_id`` is not stored yet; return the ids refused as
    stored already.

    What an upsert with ``$setOnInsert`` does, at about a third of its cost on the
    wire server (15 against 50 us a document, BENCHMARKS.md).
    """
    if not docs:
        return set()
    ids = [doc["_id"] for doc in docs]
    return await _duplicate_ids(collection.insert_many(docs, ordered=False), ids)


async def _duplicate_ids(write: Awaitable[Any], ids: list[str]) -> set[str]:
    """Run an unordered bulk write; the ids (by op index) it refused as duplicate keys."""
    try:
        await write
    except BulkWriteError as exc:
        refused = set()
        for error in exc.details["writeErrors"]:
            if error["code"] != DUPLICATE_KEY:
                raise
            refused.add(ids[error["index"]])
        return refused
    return set()


# A document to write and the version read with it (None: none was stored).
Write = tuple[dict[str, Any], int | None]


def _replace_if_unchanged(collection: Collection, chunk: list[Write]) -> Awaitable[BulkWriteResult]:
    ops = [
        ReplaceOne(
            {"_id": doc["_id"], "_v": version if version is not None else {"$exists": False}},
            doc,
            upsert=True,
        )
        for doc, version in chunk
    ]
    return collection.bulk_write(ops, ordered=False)


async def write_versioned(collection: Collection, writes: Iterable[Write]) -> set[str]:
    """Write each (document, version read); return the ids that conflicted.

    A document nobody had stored is inserted: a plain insert costs the server a
    third of a conditional upsert, and a duplicate key means someone else
    created it first. A stored one is replaced only if its version is still the
    one read; otherwise the filter misses, the upsert tries to insert an
    existing _id, and that duplicate key is the conflict.

    ``writes`` may be a generator that builds each document: every WRITE_CHUNK
    of them is sent as soon as it is built, so the server stores one chunk
    while this process builds the next.
    """

    async def write(chunk: list[Write]) -> set[str]:
        conflicts: set[str] = set()
        new = [doc for doc, version in chunk if version is None]
        if new:
            inserted = collection.insert_many(new, ordered=False)
            conflicts |= await _duplicate_ids(inserted, [d["_id"] for d in new])
        replaced = [write for write in chunk if write[1] is not None]
        if replaced:
            ids = [doc["_id"] for doc, _ in replaced]
            conflicts |= await _duplicate_ids(_replace_if_unchanged(collection, replaced), ids)
        return conflicts

    return set().union(*await _pipelined(write, _batched(writes, WRITE_CHUNK)))


@dataclass
class FencedWrites:
    """What a :func:`write_fenced` round found: documents stored already, and refusals."""

    # Inserted ids that the store already held: read and merge with them.
    existing: set[str] = field(default_factory=set)
    # Replaced ids a newer owner had written: this writer lost their partition.
    fenced: set[str] = field(default_factory=set)


async def write_fenced(
    collection: Collection,
    new: list[T],
    replacements: list[T],
    build: Callable[[T], dict[str, Any]],
    epoch: Callable[[dict[str, Any]], int],
) -> FencedWrites:
    """Insert the documents ``build`` makes of ``new``, and replace those it makes of
    ``replacements`` unless a newer epoch wrote them first.

    A replacement is an upsert filtered on the stored epoch: when a newer owner
    wrote the document the filter misses, the upsert tries to insert an existing
    ``_id``, and that duplicate key is the refusal. Each chunk's documents are
    built just before it is sent, a few chunks at a time, so the server stores one
    while this process builds the next and memory holds only those in flight.
    """
    result = FencedWrites()

    async def insert(chunk: list[T]) -> None:
        docs = [build(item) for item in chunk]
        ids = [doc["_id"] for doc in docs]
        result.existing |= await _duplicate_ids(collection.insert_many(docs, ordered=False), ids)

    async def replace(chunk: list[T]) -> None:
        docs = [build(item) for item in chunk]
        ops = [
            ReplaceOne({"_id": doc["_id"], **not_newer_than(epoch(doc))}, doc, upsert=True)
            for doc in docs
        ]
        ids = [doc["_id"] for doc in docs]
        result.fenced |= await _duplicate_ids(collection.bulk_write(ops, ordered=False), ids)

    await _bounded(
        [insert(chunk) for chunk in chunks(new, WRITE_CHUNK)]
        + [replace(chunk) for chunk in chunks(replacements, WRITE_CHUNK)]
    )
    return result
