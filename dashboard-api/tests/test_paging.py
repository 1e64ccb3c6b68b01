"""Unit tests for dashboard_api.paging: cursors round-trip and refuse anything else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dashboard_api.paging import Position, decode_cursor, encode_cursor, keyset_query
from hypothesis import given
from hypothesis import strategies as st
from telemetry_common.http.api_errors import ApiError

moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda m: m.replace(microsecond=m.microsecond - m.microsecond % 1000))


@given(moment=moments, doc_id=st.text(min_size=1, max_size=200))
def test_a_cursor_names_the_position_it_was_made_from(moment: datetime, doc_id: str) -> None:
    cursor = encode_cursor("ts", Position(moment, doc_id))
    assert decode_cursor("ts", cursor) == Position(moment, doc_id)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor


def test_an_id_cursor_carries_no_key() -> None:
    assert decode_cursor("_id", encode_cursor("_id", Position(None, "dev-7"))) == Position(
        None, "dev-7"
    )


def test_a_cursor_of_another_listing_is_refused() -> None:
    cursor = encode_cursor("created_at", Position(datetime(2025, 1, 15, tzinfo=UTC), "a1"))
    with pytest.raises(ApiError) as refused:
        decode_cursor("ts", cursor)
    assert [(e.field, e.reason) for e in refused.value.errors] == [
        ("cursor", "belongs to another listing")
    ]


@given(garbage=st.text(max_size=100))
def test_any_other_text_is_a_422_naming_cursor_never_a_crash(garbage: str) -> None:
    try:
        position = decode_cursor("ts", garbage)
    except ApiError as refused:
        assert refused.status == 422 and refused.errors[0].field == "cursor"
    else:  # only a cursor of this listing decodes, and only to plain values
        assert isinstance(position.key, datetime) and isinstance(position.id, str)


def test_the_page_after_a_cursor_starts_at_its_key_and_skips_the_ties_served() -> None:
    at = datetime(2025, 1, 15, 10, tzinfo=UTC)
    cursor = encode_cursor("ts", Position(at, "e05"))
    query, sort = keyset_query(
        {"device_id": "dev-1", "ts": {"$gte": at - timedelta(hours=1)}},
        sort_key="ts",
        cursor=cursor,
    )
    assert sort == [("ts", -1), ("_id", -1)]
    assert query == {
        "$and": [
            {"device_id": "dev-1", "ts": {"$gte": at - timedelta(hours=1)}},
            {"ts": {"$lte": at}, "$or": [{"ts": {"$lt": at}}, {"_id": {"$lt": "e05"}}]},
        ]
    }
    ascending, sort = keyset_query(
        {}, sort_key="_id", cursor=encode_cursor("_id", Position(None, "d")), descending=False
    )
    assert (ascending, sort) == ({"$and": [{}, {"_id": {"$gt": "d"}}]}, [("_id", 1)])
