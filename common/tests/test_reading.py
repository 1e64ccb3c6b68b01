"""Unit tests for telemetry_common.domain.reading: both forms, every refusal, ids, Kafka form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from telemetry_common.domain.reading import (
    InvalidReading,
    Reading,
    decode_kafka_value,
    derive_event_id,
    parse_reading,
)
from telemetry_common.infra.kafka.readings import project_header, project_of

NOW = datetime(2025, 1, 15, 12, tzinfo=UTC)
SKEW = timedelta(days=1)
TS = "2025-01-15T10:00:00Z"
TS_DT = datetime(2025, 1, 15, 10, tzinfo=UTC)

FLAT: dict[str, Any] = {
    "device_id": "dev-1",
    "ts": TS,
    "temperature_c": 25.5,
    "humidity": 60.0,
    "lat": 32.1,
    "lon": 34.9,
}
GENERAL: dict[str, Any] = {
    "event_id": "e001",
    "device_id": "dev-1",
    "ts": TS,
    "metrics": {"temp": 34.2, "cpu": 0.44},
    "tags": ["room:101"],
}
DROP = object()


def parse(body: Any, now: datetime = NOW) -> Reading:
    return parse_reading(body, now=now, max_future_skew=SKEW)


def flat(**changes: Any) -> dict[str, Any]:
    body = {**FLAT, **changes}
    return {k: v for k, v in body.items() if v is not DROP}


def refused_fields(body: Any) -> list[str]:
    with pytest.raises(InvalidReading) as info:
        parse(body)
    return [e.field for e in info.value.errors]


# --- accepted forms -------------------------------------------------------------------


def test_flat_form_becomes_a_reading() -> None:
    r = parse(FLAT)
    assert r.device_id == "dev-1"
    assert r.ts == TS_DT
    assert r.received_at == NOW
    assert r.metrics == {"temperature_c": 25.5, "humidity": 60.0}
    assert (r.lat, r.lon) == (32.1, 34.9)
    assert r.tags == ()
    # Derived from the reading itself: a retry of it has the same id.
    assert r.event_id.startswith("d-")
    assert parse(FLAT).event_id == r.event_id


def test_general_form_becomes_a_reading() -> None:
    r = parse(GENERAL)
    assert r.event_id == "e001"
    assert r.device_id == "dev-1"
    assert r.ts == TS_DT
    assert r.metrics == {"temp": 34.2, "cpu": 0.44}
    assert r.tags == ("room:101",)
    assert r.lat is None and r.lon is None


def test_integer_metrics_are_stored_as_floats() -> None:
    r = parse({"device_id": "dev-1", "ts": TS, "count": 3})
    assert r.metrics == {"count": 3.0}
    assert isinstance(r.metrics["count"], float)


def test_naive_timestamp_is_taken_as_utc() -> None:
    assert parse(flat(ts="2025-01-15T10:00:00")).ts == TS_DT


def test_offset_timestamp_is_converted_to_utc() -> None:
    r = parse(flat(ts="2025-01-15T12:00:00+02:00"))
    assert r.ts == TS_DT
    assert r.ts.utcoffset() == timedelta(0)


def test_timestamp_is_truncated_to_milliseconds() -> None:
    assert parse(flat(ts="2025-01-15T10:00:00.123456Z")).ts == TS_DT.replace(microsecond=123000)


def test_timestamp_just_inside_the_future_skew_is_accepted() -> None:
    edge = NOW + SKEW
    assert parse(flat(ts=edge.isoformat())).ts == edge


def test_no_skew_limit_accepts_far_future() -> None:
    r = parse_reading(flat(ts="2030-01-01T00:00:00Z"), now=NOW, max_future_skew=None)
    assert r.ts == datetime(2030, 1, 1, tzinfo=UTC)


def test_epoch_itself_is_accepted() -> None:
    assert parse(flat(ts="1970-01-01T00:00:00Z")).ts == datetime(1970, 1, 1, tzinfo=UTC)


def test_reading_without_ts_is_stamped_with_server_time() -> None:
    r = parse({"device_id": "dev-1", "temperature_c": 20})
    assert r.ts == NOW
    assert r.event_id.startswith("g-")


@pytest.mark.parametrize(
    "changes",
    [
        {"device_id": "a" * 128},
        {"device_id": "Dev_1.a-b:c"},
        {"lat": 90, "lon": -180},
        {"lat": -90.0, "lon": 180.0},
        {"tags": [f"t{i}" for i in range(64)]},
    ],
)
def test_boundary_values_are_accepted(changes: dict[str, Any]) -> None:
    parse(flat(**changes))


def test_duplicate_tags_are_kept_once_in_order() -> None:
    assert parse(flat(tags=["b", "a", "b"])).tags == ("b", "a")


# --- refusals -------------------------------------------------------------------------

REFUSALS = [
    ("missing device_id", flat(device_id=DROP), "device_id"),
    ("device_id null", flat(device_id=None), "device_id"),
    ("device_id with space", flat(device_id="dev 1"), "device_id"),
    ("device_id with slash", flat(device_id="dev/1"), "device_id"),
    ("device_id with pipe", flat(device_id="dev|1"), "device_id"),
    ("device_id empty", flat(device_id=""), "device_id"),
    ("device_id 129 chars", flat(device_id="a" * 129), "device_id"),
    ("device_id number", flat(device_id=42), "device_id"),
    ("device_id list", flat(device_id=["dev-1"]), "device_id"),
    ("device_id operator", flat(device_id={"$ne": None}), "device_id"),
    ("ts operator", flat(ts={"$ne": None}), "ts"),
    ("ts number", flat(ts=1736935200), "ts"),
    ("ts garbage", flat(ts="yesterday"), "ts"),
    ("ts empty", flat(ts=""), "ts"),
    ("ts month 13", flat(ts="2025-13-01T00:00:00Z"), "ts"),
    ("ts out of range after UTC", flat(ts="0001-01-01T00:00:00+01:00"), "ts"),
    ("ts before 1970", flat(ts="1969-12-31T23:59:59Z"), "ts"),
    ("ts beyond skew", flat(ts=(NOW + SKEW + timedelta(milliseconds=1)).isoformat()), "ts"),
    ("ts a year ahead", flat(ts="2026-01-15T12:00:00Z"), "ts"),
    ("metric operator", flat(temperature_c={"$ne": None}), "temperature_c"),
    ("metric string", flat(temperature_c="hot"), "temperature_c"),
    ("metric numeric string", flat(temperature_c="25.5"), "temperature_c"),
    ("metric true", flat(temperature_c=True), "temperature_c"),
    ("metric false", flat(temperature_c=False), "temperature_c"),
    ("metric NaN", flat(temperature_c=float("nan")), "temperature_c"),
    ("metric +inf", flat(temperature_c=float("inf")), "temperature_c"),
    ("metric -inf", flat(temperature_c=float("-inf")), "temperature_c"),
    ("metric huge int", flat(temperature_c=10**400), "temperature_c"),
    ("metric null", flat(temperature_c=None), "temperature_c"),
    ("nested string", {**GENERAL, "metrics": {"temp": "hot"}}, "metrics.temp"),
    ("nested bool", {**GENERAL, "metrics": {"temp": True}}, "metrics.temp"),
    ("nested NaN", {**GENERAL, "metrics": {"temp": float("nan")}}, "metrics.temp"),
    ("nested huge int", {**GENERAL, "metrics": {"temp": 10**400}}, "metrics.temp"),
    ("nested operator", {**GENERAL, "metrics": {"temp": {"$gt": 0}}}, "metrics.temp"),
    ("metrics not object", {**GENERAL, "metrics": [1, 2]}, "metrics"),
    ("no metric", {"device_id": "dev-1", "ts": TS}, "metrics"),
    ("empty metrics", {**GENERAL, "metrics": {}}, "metrics"),
    ("101 metrics", {"device_id": "d", **{f"m{i}": i for i in range(101)}}, "metrics"),
    ("top-level $ name", flat(**{"$where": 1}), "$where"),
    ("top-level dotted name", flat(**{"a.b": 1}), "a.b"),
    ("top-level digit-first name", flat(**{"1x": 1}), "1x"),
    ("nested $ name", {**GENERAL, "metrics": {"$inc": 1}}, "metrics.$inc"),
    ("nested dotted name", {**GENERAL, "metrics": {"a.b": 1}}, "metrics.a.b"),
    ("metric given twice", {**GENERAL, "temp": 1.0}, "metrics.temp"),
    ("tags string", flat(tags="room:101"), "tags"),
    ("tags object", flat(tags={"room": 101}), "tags"),
    ("65 tags", flat(tags=[f"t{i}" for i in range(65)]), "tags"),
    ("tag number", flat(tags=["ok", 101]), "tags[1]"),
    ("tag empty", flat(tags=[""]), "tags[0]"),
    ("tag too long", flat(tags=["x" * 129]), "tags[0]"),
    ("tag not printable", flat(tags=["a\nb"]), "tags[0]"),
    ("lat above 90", flat(lat=90.5), "lat"),
    ("lat below -90", flat(lat=-91), "lat"),
    ("lon above 180", flat(lon=180.01), "lon"),
    ("lat string", flat(lat="north"), "lat"),
    ("lat bool", flat(lat=True), "lat"),
    ("event_id space", {**GENERAL, "event_id": "e 1"}, "event_id"),
    ("event_id empty", {**GENERAL, "event_id": ""}, "event_id"),
    ("event_id number", {**GENERAL, "event_id": 7}, "event_id"),
    ("event_id operator", {**GENERAL, "event_id": {"$ne": None}}, "event_id"),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in REFUSALS], ids=[i for i, _, _ in REFUSALS]
)
def test_refusal_names_exactly_the_bad_field(body: dict[str, Any], field: str) -> None:
    assert refused_fields(body) == [field]


@pytest.mark.parametrize("body", [None, [FLAT], "dev-1", 42, b"{}"], ids=repr)
def test_body_that_is_not_an_object_is_refused(body: Any) -> None:
    assert refused_fields(body) == ["body"]


def test_every_bad_field_is_reported_at_once() -> None:
    body = flat(device_id="dev 1", ts=12, humidity="wet", lat=100)
    assert set(refused_fields(body)) == {"device_id", "ts", "humidity", "lat"}


def test_refusal_is_a_value_error_with_readable_reasons() -> None:
    with pytest.raises(ValueError, match="device_id: is required") as info:
        parse(flat(device_id=DROP))
    assert isinstance(info.value, InvalidReading)
    assert info.value.errors[0].as_dict() == {"field": "device_id", "reason": "is required"}


# --- idempotency ----------------------------------------------------------------------


def test_same_timestamped_reading_gets_the_same_id() -> None:
    first = parse(FLAT)
    retry = parse(dict(reversed(FLAT.items())), now=NOW + timedelta(minutes=5))
    assert first.event_id == retry.event_id
    assert first.event_id == derive_event_id(
        "dev-1", TS_DT, {"temperature_c": 25.5, "humidity": 60.0}, (), 32.1, 34.9
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"temperature_c": 25.6},
        {"humidity": 61.0},
        {"ts": "2025-01-15T10:00:01Z"},
        {"device_id": "dev-2"},
        {"tags": ["room:102"]},
        {"lat": 32.2},
        {"lon": DROP},
        {"pressure": 1013.0},
    ],
)
def test_different_readings_get_different_ids(changes: dict[str, Any]) -> None:
    assert parse(flat(**changes)).event_id != parse(FLAT).event_id


def test_reading_without_ts_or_event_id_gets_a_fresh_id_each_time() -> None:
    body = {"device_id": "dev-1", "temperature_c": 20}
    ids = {parse(body).event_id for _ in range(5)}
    assert len(ids) == 5
    assert all(not r.startswith("d-") for r in ids)


def test_explicit_event_id_is_kept() -> None:
    assert parse(GENERAL).event_id == "e001"
    no_ts = {k: v for k, v in GENERAL.items() if k != "ts"}
    assert parse(no_ts).event_id == "e001"


# --- canonical Kafka form -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        FLAT,
        GENERAL,
        flat(ts="2025-01-15T10:00:00.123456+02:00"),
        {"device_id": "dev-1", "temperature_c": -4},
        flat(lat=0.0, lon=0.0),
    ],
    ids=["flat", "general", "microseconds", "no-ts", "zero-coords"],
)
def test_kafka_round_trip_gives_an_equal_reading(body: dict[str, Any]) -> None:
    reading = parse(body)
    decoded = decode_kafka_value(reading.to_kafka_value())
    assert decoded == reading
    assert decoded.ts.microsecond % 1000 == 0


def test_kafka_value_uses_utc_z_timestamps() -> None:
    doc = orjson.loads(parse(flat(ts="2025-01-15T12:00:00.5+02:00")).to_kafka_value())
    assert doc["ts"] == "2025-01-15T10:00:00.500Z"
    assert doc["received_at"] == "2025-01-15T12:00:00.000Z"
    assert doc["metrics"] == {"temperature_c": 25.5, "humidity": 60.0}


def test_decode_does_not_apply_the_future_skew() -> None:
    # Accepted once, a record must stay decodable whatever the lag between ts and receipt.
    reading = parse_reading(flat(ts="2030-01-01T00:00:00Z"), now=NOW, max_future_skew=None)
    assert decode_kafka_value(reading.to_kafka_value()) == reading


def _canonical(**changes: Any) -> bytes:
    doc = orjson.loads(parse(GENERAL).to_kafka_value())
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not DROP})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (None, "value"),
        (b"", "value"),
        (b"not json", "value"),
        (b"\xff\xfe", "value"),
        (b"[1, 2]", "value"),
        (b'"text"', "value"),
        (_canonical(received_at=DROP), "received_at"),
        (_canonical(received_at=1736935200), "received_at"),
        (_canonical(received_at="garbage"), "received_at"),
        (_canonical(received_at="0001-01-01T00:00:00+01:00"), "received_at"),
        (_canonical(event_id=DROP), "event_id"),
        (_canonical(device_id="dev 1"), "device_id"),
        (_canonical(metrics={"temp": "hot"}), "metrics.temp"),
    ],
    ids=[
        "none",
        "empty",
        "not-json",
        "not-utf8",
        "array",
        "string",
        "no-received_at",
        "numeric-received_at",
        "bad-received_at",
        "out-of-range-received_at",
        "no-event_id",
        "bad-device_id",
        "bad-metric",
    ],
)
def test_decode_refuses_poison_records(raw: bytes | None, field: str) -> None:
    # The consumers treat InvalidReading (a ValueError) as a poison record; any other
    # exception escapes the decode loop and stalls the partition.
    with pytest.raises(InvalidReading) as info:
        decode_kafka_value(raw)
    assert [e.field for e in info.value.errors] == [field]


def test_a_records_project_is_its_header_and_the_default_without_one() -> None:
    assert project_of(None) == project_of([("x-request-id", b"r1")]) == "default"
    assert project_of([("project", b"prj-4f1c2a9b03de")]) == "prj-4f1c2a9b03de"
    with pytest.raises(InvalidReading) as refused:
        project_of([("project", b"not a project!")])
    assert refused.value.errors[0].field == "project"


def test_the_project_travels_beside_the_value_not_in_it() -> None:
    posted = parse_reading(
        {"device_id": "dev-1", "t": 1.0}, now=NOW, max_future_skew=None, project_id="prj-roof"
    )
    assert posted.project_id == "prj-roof"
    value = posted.to_kafka_value()
    assert b"prj-roof" not in value
    assert decode_kafka_value(value, project_header("prj-roof")[1].decode()) == posted
    assert decode_kafka_value(value).project_id == "default"
