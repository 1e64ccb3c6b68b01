"""Timestamps: stored as BSON dates (millisecond precision, UTC), served as ISO 8601 with Z."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc_ms(moment: datetime) -> datetime:
    """Aware UTC datetime truncated to what a BSON date can hold (milliseconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def iso_z(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, as every API response serves timestamps."""
    return to_utc_ms(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return to_utc_ms(datetime.now(UTC))
