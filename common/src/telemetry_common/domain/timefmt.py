"""Timestamps: stored as BSON dates (millisecond precision, UTC), served as ISO 8601 with Z."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc_ms(moment: datetime) -> datetime:
    """Aware UTC datetime truncated to what a BSON date can hold (milliseconds)."""
    # Already in form (what the ingestion API parses from every canonical "...Z"
    # timestamp): no conversion, no copy. It runs once or twice per reading.
    if moment.tzinfo is UTC and not moment.microsecond % 1000:
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def iso_z(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, as every API response serves timestamps."""
    if moment.tzinfo is not UTC:
        moment = to_utc_ms(moment)
    # timespec="milliseconds" truncates as to_utc_ms does; the UTC offset is always
    # the last six characters, "+00:00".
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def utcnow() -> datetime:
    return to_utc_ms(datetime.now(UTC))
