"""Unit tests of the Server-Sent Events framing of dashboard_api.routes.stream."""

from __future__ import annotations

from dashboard_api.live import Event
from dashboard_api.routes.stream import alert_sse, sse


def test_a_reading_is_one_event_with_its_id_and_one_line_of_json() -> None:
    frame = sse(Event("reading", {"event_id": "e1", "device_id": "d", "message": "a\nb"}))
    assert frame.encode() == (
        b'id: e1\nevent: reading\ndata: {"event_id":"e1","device_id":"d","message":"a\\nb"}\n\n'
    )


def test_a_rollup_event_carries_no_id() -> None:
    # Only a reading has an id of its own (its event id).
    frame = sse(Event("rollup", {"device_id": "d", "count": 3}))
    assert frame.encode() == b'event: rollup\ndata: {"device_id":"d","count":3}\n\n'


def test_an_alert_transition_is_the_seeds_data_shape_with_its_notification_id() -> None:
    # No event name: an EventSource's onmessage sees it, as it saw the seed's `data: {...}`.
    frame = alert_sse({"notification_id": "e1:r-1:fired", "transition": "fired"})
    assert frame.encode() == (
        b'id: e1:r-1:fired\ndata: {"notification_id":"e1:r-1:fired","transition":"fired"}\n\n'
    )
