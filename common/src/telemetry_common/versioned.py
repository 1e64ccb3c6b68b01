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

from dataclasses import dataclass, field
from typing import Any

from pymongo import ReplaceOne
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000


def source(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


async def insert_first_copies(collection: Any, docs: list[dict[str, Any]]) -> set[str]:
    """Insert documents keyed by event id, each with its ``_src``; return the ids that are
    second copies: stored already from another position."""
    duplicate_ids: list[str] = []
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        for error in exc.details["writeErrors"]:
            if error["code"] != DUPLICATE_KEY:
                raise
            duplicate_ids.append(docs[error["index"]]["_id"])
    if not duplicate_ids:
        return set()
    sources = {doc["_id"]: doc["_src"] for doc in docs}
    # Same event, same position: a replay of a record whose writes may not all
    # have happened; it is processed again (the watermarks decide).
    return {
        doc["_id"]
        async for doc in collection.find({"_id": {"$in": duplicate_ids}}, {"_src": 1})
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


async def replace_versioned(
    collection: Any, replacements: list[tuple[dict[str, Any], int | None]]
) -> set[str]:
    """Replace each document if its version is still the one read; return ids that conflicted."""
    if not replacements:
        return set()
    ops = [
        ReplaceOne(
            {"_id": doc["_id"], "_v": previous if previous is not None else {"$exists": False}},
            doc,
            upsert=True,
        )
        for doc, previous in replacements
    ]
    try:
        await collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        conflicts = set()
        for error in exc.details["writeErrors"]:
            if error["code"] != DUPLICATE_KEY:
                raise
            # The filter missed because the version moved, so the upsert tried
            # to insert an existing _id: someone else wrote this one first.
            conflicts.add(replacements[error["index"]][0]["_id"])
        return conflicts
    return set()
