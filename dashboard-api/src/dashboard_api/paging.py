"""Cursor pagination: keyset on (sort key, _id), stable while data keeps arriving.

A page is sorted by its key, newest first, with ``_id`` breaking ties; the
cursor holds the key and ``_id`` of the page's last item, and the next page
asks for what sorts after it. New documents (a newer key) land before the
cursor and never shift a later page, as skip/offset would. The cursor is
opaque to clients (base64url of JSON); decoding it checks every value's type,
so nothing in it can reach MongoDB as an operator.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Query
from telemetry_common.domain.timefmt import iso_z, to_utc_ms
from telemetry_common.http.api_errors import ApiError
from telemetry_common.infra.mongo import Collection

Cursor = Annotated[
    str | None,
    Query(
        max_length=512,
        description="the `next_cursor` of the previous page; absent for the first page",
        examples=["WyJ0cyIsIjIwMjUtMDEtMTVUMTA6MDA6MDAuMDAwWiIsImUwMDEiXQ"],
    ),
]


@dataclass(frozen=True)
class Position:
    key: datetime | None  # None when the listing is sorted by _id alone
    id: str


def encode_cursor(sort_key: str, position: Position) -> str:
    key = iso_z(position.key) if position.key is not None else None
    raw = orjson.dumps([sort_key, key, position.id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(sort_key: str, cursor: str) -> Position:
    """The position a cursor of this listing names, or a 422 naming ``cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, key, doc_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise ApiError(422, "cursor", "not a cursor this API returned") from None
    if kind != sort_key:
        raise ApiError(422, "cursor", "belongs to another listing")
    if not isinstance(doc_id, str) or not (key is None or isinstance(key, str)):
        raise ApiError(422, "cursor", "not a cursor this API returned")
    if (key is None) != (sort_key == "_id"):
        raise ApiError(422, "cursor", "not a cursor this API returned")
    try:
        moment = to_utc_ms(datetime.fromisoformat(key)) if key is not None else None
    except ValueError:
        raise ApiError(422, "cursor", "not a cursor this API returned") from None
    return Position(moment, doc_id)


def after(sort_key: str, position: Position, descending: bool) -> dict[str, Any]:
    """The filter for what sorts after ``position``."""
    beyond = "$lt" if descending else "$gt"
    if sort_key == "_id":
        return {"_id": {beyond: position.id}}
    # The bound on the key alone is what lets the index scan start at the cursor
    # (an $or of the two cases alone scans from the newest key and filters);
    # the $or then drops the ties already served.
    return {
        sort_key: {f"{beyond}e": position.key},
        "$or": [{sort_key: {beyond: position.key}}, {"_id": {beyond: position.id}}],
    }


def keyset_query(
    query: dict[str, Any], *, sort_key: str, cursor: str | None, descending: bool = True
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The filter and sort of the page after ``cursor`` (the first page without one)."""
    if cursor is not None:
        # $and keeps a time range on the same field next to the keyset condition.
        query = {"$and": [query, after(sort_key, decode_cursor(sort_key, cursor), descending)]}
    direction = -1 if descending else 1
    sort = (
        [("_id", direction)] if sort_key == "_id" else [(sort_key, direction), ("_id", direction)]
    )
    return query, sort


async def keyset_page(
    collection: Collection,
    query: dict[str, Any],
    *,
    sort_key: str,
    limit: int,
    cursor: str | None,
    descending: bool = True,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of documents and the cursor of the next (None on the last page)."""
    query, sort = keyset_query(query, sort_key=sort_key, cursor=cursor, descending=descending)
    # One more than the page: whether a next page exists, without a count.
    docs = [doc async for doc in collection.find(query).sort(sort).limit(limit + 1)]
    if len(docs) <= limit:
        return docs, None
    last = docs[limit - 1]
    key = None if sort_key == "_id" else last[sort_key]
    return docs[:limit], encode_cursor(sort_key, Position(key, last["_id"]))
