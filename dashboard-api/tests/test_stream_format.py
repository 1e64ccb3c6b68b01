"""Unit tests of the Server-Sent Events framing of dashboard_api.routes.stream."""

from __future__ import annotations

from dashboard_api.live import Event
from dashboard_api.routes.stream import sse


def test_a_reading_is_one_event_with_its_id_and_one_line_of_json() -> None:
    frame = sse(Event("reading", {"event_id": "e1", "device_id": "d", "message": "a\nb"}))
    assert frame == (
        b'event: reading\nid: e1\ndata: {"event_id":"e1","device_id":"d","message":"a\\nb"}\n\n'
    )


def test_a_rollup_event_carries_no_id() -> None:
    # Only a reading has an id of its own (its event id).
    frame = sse(Event("rollup", {"device_id": "d", "count": 3}))
    assert frame == b'event: rollup\ndata: {"device_id":"d","count":3}\n\n'
