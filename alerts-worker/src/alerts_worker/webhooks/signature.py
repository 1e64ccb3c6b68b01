"""How a receiver knows a delivery is ours, unchanged and fresh (the scheme Stripe uses).

Every delivery carries::

    X-Telemetry-Timestamp: 1736935200
    X-Telemetry-Signature: t=1736935200,v1=<hex HMAC-SHA256(secret, "1736935200." + body)>
    Idempotency-Key: <notification_id>

A receiver recomputes v1 over the raw body with the webhook's secret, compares it
in constant time, and refuses a timestamp older than a few minutes, so a captured
request cannot be replayed later; it drops a repeated Idempotency-Key, which a
retry after a lost response can bring. ``verify`` is that check.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Telemetry-Timestamp"
SIGNATURE_HEADER = "X-Telemetry-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance_s: float = DEFAULT_TOLERANCE_S
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    # Several v1 values let a sender sign with the old and the new secret while rotating.
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def delivery_headers(
    secret: str, body: bytes, notification_id: str, webhook_id: str, attempt: int, now: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "telemetry-alert-notifier/1",
        IDEMPOTENCY_HEADER: notification_id,
        TIMESTAMP_HEADER: str(now),
        SIGNATURE_HEADER: signature_header(secret, now, body),
        "X-Telemetry-Webhook-Id": webhook_id,
        "X-Telemetry-Attempt": str(attempt),
    }
