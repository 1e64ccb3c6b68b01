"""Where a reading is parsed: the two input forms, every refusal, and the canonical Kafka form.

A device sends the flat form (metrics as top-level numbers) or the general form
(``metrics`` object, optional ``event_id`` and ``tags``); both become one
:class:`Reading`. Parsing is pure (no I/O) so every rule here is unit-tested, and
the workers run the same checks on what they consume, so a record someone wrote
to Kafka by hand cannot reach MongoDB unchecked.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from telemetry_common.domain.identifiers import (
    DEVICE_ID_PATTERN,
    DEVICE_ID_RE,
    EVENT_ID_PATTERN,
    EVENT_ID_RE,
    METRIC_NAME_PATTERN,
    METRIC_NAME_RE,
)
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import iso_z, to_utc_ms

RESERVED_FIELDS = frozenset({"device_id", "ts", "event_id", "metrics", "tags", "lat", "lon"})
MAX_METRICS = 100
MAX_TAGS = 64
MAX_TAG_LENGTH = 128
EARLIEST_TS = datetime(1970, 1, 1, tzinfo=UTC)
MAX_REMEMBERED_METRIC_NAMES = 10_000


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


class InvalidReading(ValueError):
    """A reading that can never be accepted; carries every field error found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))


@dataclass(frozen=True, slots=True)
class Reading:
    event_id: str
    device_id: str
    ts: datetime
    received_at: datetime
    metrics: dict[str, float]
    tags: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None
    # The project of the key that posted it; on Kafka it travels in a header
    # (telemetry_common.infra.kafka.readings), beside the canonical value.
    project_id: str = DEFAULT_PROJECT

    def to_kafka_value(self) -> bytes:
        """The canonical form on ``telemetry.raw``: JSON, timestamps ISO 8601 UTC."""
        doc: dict[str, Any] = {
            "event_id": self.event_id,
            "device_id": self.device_id,
            "ts": iso_z(self.ts),
            "received_at": iso_z(self.received_at),
            "metrics": self.metrics,
            "tags": list(self.tags),
        }
        if self.lat is not None:
            doc["lat"] = self.lat
        if self.lon is not None:
            doc["lon"] = self.lon
        return orjson.dumps(doc)


def parse_reading(
    body: Any,
    *,
    now: datetime,
    max_future_skew: timedelta | None,
    project_id: str = DEFAULT_PROJECT,
) -> Reading:
    """Validate one reading in either form; raise :class:`InvalidReading` naming each bad field."""
    if type(body) is not dict and not isinstance(body, Mapping):
        raise InvalidReading([FieldError("body", "a reading must be a JSON object")])
    errors: list[FieldError] = []

    device_id = body.get("device_id")
    if device_id is None:
        errors.append(FieldError("device_id", "is required"))
    elif not isinstance(device_id, str):
        errors.append(FieldError("device_id", "must be a string"))
    elif not DEVICE_ID_RE.fullmatch(device_id):
        errors.append(
            FieldError("device_id", "must be 1-128 characters of letters, digits and -_.:")
        )

    ts = _parse_ts(body.get("ts"), now, max_future_skew, errors)
    event_id = _parse_event_id(body.get("event_id"), errors)
    metrics = _parse_metrics(body, errors)
    tags = _parse_tags(body.get("tags"), errors)
    lat = _parse_coordinate(body, "lat", 90.0, errors)
    lon = _parse_coordinate(body, "lon", 180.0, errors)

    if errors:
        raise InvalidReading(errors)
    assert isinstance(device_id, str)

    if event_id is None:
        if ts is not None:
            event_id = derive_event_id(device_id, ts, metrics, tags, lat, lon)
        else:
            # No timestamp means every POST is a new reading at server time, so
            # there is nothing stable to derive an id from.
            event_id = "g-" + uuid.uuid4().hex
    return Reading(
        event_id=event_id,
        device_id=device_id,
        ts=ts if ts is not None else now,
        received_at=now,
        metrics=metrics,
        tags=tags,
        lat=lat,
        lon=lon,
        project_id=project_id,
    )


def derive_event_id(
    device_id: str,
    ts: datetime,
    metrics: Mapping[str, float],
    tags: tuple[str, ...] = (),
    lat: float | None = None,
    lon: float | None = None,
) -> str:
    """A stable id for a timestamped reading, so a retried identical POST is counted once."""
    material = orjson.dumps([device_id, iso_z(ts), sorted(metrics.items()), list(tags), lat, lon])
    return "d-" + hashlib.sha256(material).hexdigest()[:32]


def decode_kafka_value(raw: bytes | None, project_id: str = DEFAULT_PROJECT) -> Reading:
    """Read a canonical record back; anything else is a poison record (InvalidReading)."""
    if raw is None:
        raise InvalidReading([FieldError("value", "record has no value")])
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidReading([FieldError("value", f"not JSON: {exc}")]) from None
    if not isinstance(doc, dict):
        raise InvalidReading([FieldError("value", "must be a JSON object")])
    received_raw = doc.pop("received_at", None)
    if not isinstance(received_raw, str):
        raise InvalidReading([FieldError("received_at", "is required in the canonical form")])
    try:
        received_at = to_utc_ms(datetime.fromisoformat(received_raw))
    except (ValueError, OverflowError):
        raise InvalidReading([FieldError("received_at", "is not ISO 8601")]) from None
    if "event_id" not in doc:
        raise InvalidReading([FieldError("event_id", "is required in the canonical form")])
    return parse_reading(doc, now=received_at, max_future_skew=None, project_id=project_id)


def reading_json_schema() -> dict[str, Any]:
    """The JSON Schema of a reading in either form, for the API's OpenAPI document.

    Built from the limits the parser enforces, so the two cannot drift apart. It
    describes each field; rules across fields (at least one metric, at most
    MAX_METRICS of them over both forms, ``ts`` not too far ahead) are the
    parser's alone, and their refusals name the field.
    """
    metric = {"type": "number", "description": "a finite number"}
    return {
        "title": "Reading",
        "description": "A reading in the flat form (each metric a top-level number) or the "
        "general form (`metrics`); at least one metric either way.",
        "type": "object",
        "required": ["device_id"],
        "propertyNames": {"pattern": METRIC_NAME_PATTERN},
        "properties": {
            "device_id": {"type": "string", "pattern": DEVICE_ID_PATTERN, "examples": ["dev-1"]},
            "ts": {
                "type": "string",
                "description": "ISO 8601, not before 1970; no offset means UTC; "
                "server time when absent",
                "examples": ["2025-01-15T10:00:00Z"],
            },
            "event_id": {
                "type": "string",
                "pattern": EVENT_ID_PATTERN,
                "description": "makes the reading idempotent; derived from device_id, ts and "
                "values when absent and ts is given",
            },
            "metrics": {
                "type": "object",
                "description": "general form: metric name -> number",
                "maxProperties": MAX_METRICS,
                "propertyNames": {"pattern": METRIC_NAME_PATTERN},
                "additionalProperties": metric,
            },
            "tags": {
                "type": "array",
                "maxItems": MAX_TAGS,
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH},
                "description": "printable strings; repeats are kept once",
            },
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180},
        },
        "additionalProperties": {**metric, "description": "a metric (flat form)"},
    }


def _parse_ts(
    raw: Any, now: datetime, max_future_skew: timedelta | None, errors: list[FieldError]
) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        errors.append(FieldError("ts", "must be an ISO 8601 string such as 2025-01-15T10:00:00Z"))
        return None
    try:
        ts = to_utc_ms(datetime.fromisoformat(raw))
    except (ValueError, OverflowError):
        errors.append(FieldError("ts", f"is not an ISO 8601 timestamp: {raw[:64]!r}"))
        return None
    if ts < EARLIEST_TS:
        errors.append(FieldError("ts", "is before 1970-01-01T00:00:00Z"))
        return None
    if max_future_skew is not None and ts > now + max_future_skew:
        errors.append(
            FieldError(
                "ts",
                f"is more than {max_future_skew.total_seconds():g}s ahead of server time "
                f"{iso_z(now)}; check the device clock",
            )
        )
        return None
    return ts


def _parse_event_id(raw: Any, errors: list[FieldError]) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not EVENT_ID_RE.fullmatch(raw):
        errors.append(
            FieldError("event_id", "must be 1-128 characters of letters, digits and -_.:")
        )
        return None
    return raw


def _parse_metric_value(name: str, raw: Any, errors: list[FieldError]) -> float | None:
    # What JSON decoding gives nearly always, checked first: this runs for every metric.
    if type(raw) is float and math.isfinite(raw):
        return raw
    # bool is an int subclass in Python; `true` is not a measurement.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        errors.append(FieldError(name, "must be a finite number"))
        return None
    try:
        value = float(raw)
    except OverflowError:
        errors.append(FieldError(name, "is out of range for a 64-bit float"))
        return None
    if not math.isfinite(value):
        errors.append(FieldError(name, "must be a finite number"))
        return None
    return value


def _valid_metric_name(name: Any) -> bool:
    return isinstance(name, str) and _valid_metric_string(name)


# A fleet uses a few metric names over and over; bounded, so that readings with
# made-up names cannot grow it without end.
@lru_cache(maxsize=MAX_REMEMBERED_METRIC_NAMES)
def _valid_metric_string(name: str) -> bool:
    return METRIC_NAME_RE.fullmatch(name) is not None


def _parse_metrics(body: Mapping[str, Any], errors: list[FieldError]) -> dict[str, float]:
    errors_before = len(errors)
    metrics: dict[str, float] = {}
    for name, raw in body.items():
        if name in RESERVED_FIELDS:
            continue
        if not _valid_metric_name(name):
            errors.append(FieldError(str(name)[:64], "is not a valid metric name"))
            continue
        value = _parse_metric_value(name, raw, errors)
        if value is not None:
            metrics[name] = value

    nested = body.get("metrics")
    if nested is not None:
        if not isinstance(nested, Mapping):
            errors.append(FieldError("metrics", "must be an object of metric name to number"))
        else:
            for name, raw in nested.items():
                path = f"metrics.{str(name)[:64]}"
                if not _valid_metric_name(name):
                    errors.append(
                        FieldError(
                            path,
                            "metric names are 1-64 letters, digits, _ and -, "
                            "starting with a letter or _",
                        )
                    )
                    continue
                if name in metrics:
                    errors.append(FieldError(path, "is also given as a top-level field"))
                    continue
                value = _parse_metric_value(path, raw, errors)
                if value is not None:
                    metrics[name] = value

    if len(metrics) > MAX_METRICS:
        errors.append(FieldError("metrics", f"at most {MAX_METRICS} metrics per reading"))
    elif not metrics and len(errors) == errors_before:
        # Only when no metric was refused: "at least one" would bury the real reason.
        errors.append(FieldError("metrics", "at least one numeric metric is required"))
    return metrics


def _parse_tags(raw: Any, errors: list[FieldError]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(FieldError("tags", "must be an array of strings"))
        return ()
    if len(raw) > MAX_TAGS:
        errors.append(FieldError("tags", f"at most {MAX_TAGS} tags per reading"))
        return ()
    tags: list[str] = []
    for index, tag in enumerate(raw):
        if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH or not tag.isprintable():
            errors.append(
                FieldError(
                    f"tags[{index}]", f"must be a printable string of 1-{MAX_TAG_LENGTH} characters"
                )
            )
            continue
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _parse_coordinate(
    body: Mapping[str, Any], name: str, bound: float, errors: list[FieldError]
) -> float | None:
    raw = body.get(name)
    if raw is None:
        return None
    value = _parse_metric_value(name, raw, errors)
    if value is not None and not -bound <= value <= bound:
        errors.append(FieldError(name, f"must be between -{bound:g} and {bound:g}"))
        return None
    return value
