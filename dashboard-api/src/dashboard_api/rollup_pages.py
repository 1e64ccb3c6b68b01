"""Rollup listings: rows per metric, paged newest first, read from bucket documents.

A bucket document holds every metric of one (device, resolution, bucket); the
API serves one row per metric, newest first, ties in descending (device, metric)
order as ever (see ``listing_key``). Documents read in (timestamp, _id) order
newest first give their rows in that order once each document's rows are put in
metric order: a row's id is its document's id followed by ``|metric``, and no
document id is a prefix of another's. A page is ``limit`` rows, so a page may
end inside a document: the cursor names the last row served, and the next page
reads that document again and serves only its rows after the cursor.

One device's documents are a contiguous ``_id`` range in time order, so its
listing is read along ``_id`` alone; listings across devices read the
(project, resolution, timestamp, _id) index.

A resolution merged at read time (5m from 1m) is listed the same way from
buckets merged on the fly: one device's source documents newest first come
window by window; across devices, the window index gives each window's source
documents grouped by device, newest window first. Each group is merged into
the bucket a stored document would be (``rollup_layout.merged_bucket``), with
the id it would have, so rows, their order and cursors behave as if stored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from telemetry_common.domain.resolutions import bucket_start
from telemetry_common.domain.rollup_layout import (
    RowSelection,
    bucket_filter,
    bucket_id,
    merged_bucket,
    merged_filter,
    merged_projection,
    metric_rows,
    parse_bucket_id,
    row_projection,
    window_field,
)
from telemetry_common.infra.mongo import Collection, newest_first

from dashboard_api.paging import Position, after, decode_cursor, encode_cursor

SORT_KEY = "timestamp"


@dataclass(frozen=True)
class RollupQuery:
    filter: dict[str, Any]
    sort: list[tuple[str, int]]
    # None: whole documents. Projecting costs the local store (secantusd) about as
    # much server time as the query; it pays only where it leaves most of the
    # document behind (the other metrics), not for a few bookkeeping fields.
    projection: dict[str, int] | None


def rollup_query(resolution: str, selection: RowSelection, resume: Position | None) -> RollupQuery:
    """The documents holding the rows of a listing, from the one holding the row after
    ``resume`` (from the newest without one), newest first."""
    query = bucket_filter(resolution, selection)
    metric = selection.metric
    if selection.device_id is not None:
        sort = [("_id", -1)]
        if resume is not None:
            # The cursor's own document sorts just below its row's id, so it is read
            # again for its remaining rows; later documents sort below it.
            ids = query["_id"]
            ids["$lt"] = min(ids["$lt"], resume.id)
    else:
        sort = newest_first(SORT_KEY)
        if resume is not None:
            # $and keeps the time range on the same field next to the keyset condition.
            query = {"$and": [query, after(SORT_KEY, resume, descending=True)]}
    projection = row_projection(metric) if metric is not None else None
    return RollupQuery(query, sort, projection)


class RowPage:
    """The rows of documents read newest first, after a cursor's row, until a page is full.

    Feed it documents in listing order while ``add`` answers False; ``limit + 2``
    documents are always enough: the first may be the cursor's own, with no row
    left to serve, and every other one has at least one row.
    """

    def __init__(self, limit: int, metric: str | None, resume: Position | None):
        self.limit = limit
        self._metric = metric
        self.resume = resume
        self._rows: list[dict[str, Any]] = []

    @property
    def documents_needed(self) -> int:
        return self.limit + 2

    def add(self, doc: Mapping[str, Any]) -> bool:
        """Take a document's rows after the cursor; True once the page and one row more are
        in (that one row only says that a next page exists)."""
        for row in sorted(metric_rows(doc, self._metric), key=listing_key, reverse=True):
            if self.resume is not None and not comes_after(row, self.resume):
                continue
            self._rows.append(row)
            if len(self._rows) > self.limit:
                return True
        return False

    def rows(self) -> list[dict[str, Any]]:
        return self._rows[: self.limit]

    def next_position(self) -> Position | None:
        """Where the next page starts: the last row of this one; None on the last page."""
        if len(self._rows) <= self.limit:
            return None
        last = self._rows[self.limit - 1]
        return Position(last[SORT_KEY], last["_id"])


def listing_key(row: Mapping[str, Any]) -> tuple[datetime, str]:
    """Where a row sorts in a listing (which is in descending order of this key).

    Its timestamp, then its id as if ``|`` followed it: the layout before had one
    document per metric with ids ``device|metric|resolution|start``, so of two
    metrics of one bucket where one name begins the other (``temp`` and
    ``temp_max``) the shorter sorted higher; bare row ids would sort it lower and
    change the order clients have always been served.
    """
    return row[SORT_KEY], row["_id"] + "|"


def comes_after(row: Mapping[str, Any], position: Position) -> bool:
    """Whether ``row`` comes after ``position`` (the last row of a page) in a listing."""
    assert position.key is not None
    return listing_key(row) < (position.key, position.id + "|")


@dataclass(frozen=True)
class MergedFrom:
    """A resolution served by merging the buckets of a stored one."""

    source: str
    width_s: int


# Source documents fetched per round trip while merging; a page needs at most
# (limit + 2) merged buckets of up to width / source width documents each.
MERGE_BATCH = 300


def merged_query(
    resolution: str, merged_from: MergedFrom, selection: RowSelection, resume: Position | None
) -> RollupQuery:
    """The source documents of a merged listing, from the window of the row after
    ``resume`` on, newest window first; across devices grouped by device in a window."""
    query = merged_filter(merged_from.source, resolution, merged_from.width_s, selection)
    project_id, device_id, metric = selection.project_id, selection.device_id, selection.metric
    projection = merged_projection(metric) if metric is not None else None
    if device_id is not None:
        if resume is not None:
            # The cursor's window is read again for its remaining rows.
            assert resume.key is not None
            after_window = resume.key + timedelta(seconds=merged_from.width_s)
            ids = query["_id"]
            ids["$lt"] = min(
                ids["$lt"], bucket_id(project_id, device_id, merged_from.source, after_window)
            )
        return RollupQuery(query, [("_id", -1)], projection)
    window = window_field(resolution)
    if resume is not None:
        assert resume.key is not None
        # The cursor's device in its window is read again for its remaining rows; the
        # ids of its source documents sort just below `project|device|source|;`, and
        # those of the devices after it below that, as their row ids do.
        cursor_device = parse_bucket_id(resume.id).device_id
        bound = f"{project_id}|{cursor_device}|{merged_from.source}|;"
        query = {
            "$and": [
                query,
                {
                    "$or": [
                        {window: {"$lt": resume.key}},
                        {window: resume.key, "_id": {"$lt": bound}},
                    ]
                },
            ]
        }
    return RollupQuery(query, newest_first(window), projection)


async def merged_buckets(
    docs: AsyncIterator[Mapping[str, Any]], project_id: str, resolution: str, width_s: int
) -> AsyncGenerator[dict[str, Any]]:
    """Merge consecutive source documents of one (device, window) into one bucket each."""
    group: list[Mapping[str, Any]] = []
    group_key: tuple[str, datetime] | None = None
    async for doc in docs:
        key = (doc["device_id"], bucket_start(doc["timestamp"], width_s))
        if key != group_key and group:
            assert group_key is not None
            yield merged_bucket(project_id, group_key[0], resolution, group_key[1], group)
            group = []
        group_key = key
        group.append(doc)
    if group:
        assert group_key is not None
        yield merged_bucket(project_id, group_key[0], resolution, group_key[1], group)


async def rollup_page(
    collection: Collection,
    resolution: str,
    selection: RowSelection,
    *,
    limit: int,
    cursor: str | None,
    merged_from: MergedFrom | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of rows (stored shape, bookkeeping included) and the next page's cursor."""
    resume = decode_cursor(SORT_KEY, cursor) if cursor is not None else None
    page = RowPage(limit, selection.metric, resume)
    docs: AsyncIterator[Mapping[str, Any]]
    merging: AsyncGenerator[dict[str, Any]] | None = None
    if merged_from is None:
        query = rollup_query(resolution, selection, resume)
        found = (
            collection.find(query.filter, query.projection)
            .sort(query.sort)
            .limit(page.documents_needed)
        )
        docs = found
    else:
        query = merged_query(resolution, merged_from, selection, resume)
        # No hint naming the window index: until the service has created it (in
        # the background at start) a hint would fail the query, not slow it.
        found = (
            collection.find(query.filter, query.projection).sort(query.sort).batch_size(MERGE_BATCH)
        )
        docs = merging = merged_buckets(
            found, selection.project_id, resolution, merged_from.width_s
        )
    try:
        async for doc in docs:
            if page.add(doc):
                break
    finally:
        if merging is not None:
            await merging.aclose()
        await found.close()
    position = page.next_position()
    return page.rows(), encode_cursor(SORT_KEY, position) if position is not None else None
