"""Where stored documents become API responses: public fields only, timestamps ISO 8601 Z."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from telemetry_common.domain.timefmt import iso_z

# Bookkeeping for idempotent writes; meaningless to API clients.
INTERNAL_FIELDS = frozenset(
    {
        "_v",
        "_applied",
        "_e",
        "_src",
        "m2",
        "mean",
        "sum_partials",
        "sketch",
        "expire_at",
        "notified",
        "last_value_ts",
    }
)


def as_served(doc: dict[str, Any], id_name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in INTERNAL_FIELDS:
            continue
        if key == "_id":
            if id_name:
                out[id_name] = value
            continue
        out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
