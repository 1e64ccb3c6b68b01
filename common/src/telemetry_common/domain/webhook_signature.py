"""How a receiver knows a delivery is ours, unchanged and fresh: Standard Webhooks.

Every delivery is signed as the Standard Webhooks specification
(https://www.standardwebhooks.com) says, so a receiver verifies it with an
off-the-shelf library (``standardwebhooks`` on PyPI and npm, Svix's, ...)::

    webhook-id: <notification_id>          (also sent as Idempotency-Key)
    webhook-timestamp: 1736935200
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

where ``key`` is the secret's base64 part, decoded (a secret is ``whsec_`` and
the base64 of 32 random bytes). The receiver refuses a timestamp more than a
few minutes away, so a captured request cannot be replayed later, and drops a
repeated webhook-id, which a retry after a lost response can bring. ``verify``
is that check.

Deliveries also carry the signature of earlier versions (``X-Telemetry-Signature:
t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``, the secret's
own bytes as the key) for receivers written against it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
LEGACY_SIGNATURE_HEADER = "X-Telemetry-Signature"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret, as the Standard Webhooks libraries derive it: the base64
    after ``whsec_``, decoded. ValueError for a secret that is not base64."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("not whsec_ followed by base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value: ``v1,`` and the base64 HMAC-SHA256."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether ``headers`` (lower-case names) sign ``body`` with ``secret`` within
    ``tolerance_s`` of ``now``."""
    try:
        message_id = headers[ID_HEADER]
        timestamp = int(headers[TIMESTAMP_HEADER])
        given = headers[SIGNATURE_HEADER].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, message_id, timestamp, body)
    # Several signatures, space-separated, let a sender sign with the old and the new
    # secret while rotating.
    return any(hmac.compare_digest(expected, signature) for signature in given)


def legacy_signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def delivery_headers(
    secret: str, body: bytes, notification_id: str, webhook_id: str, attempt: int, now: int
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "telemetry-alert-notifier/1",
        IDEMPOTENCY_HEADER: notification_id,
        ID_HEADER: notification_id,
        TIMESTAMP_HEADER: str(now),
        LEGACY_SIGNATURE_HEADER: legacy_signature(secret, now, body),
        "X-Telemetry-Webhook-Id": webhook_id,
        "X-Telemetry-Attempt": str(attempt),
    }
    try:
        headers[SIGNATURE_HEADER] = sign(secret, notification_id, now, body)
    except ValueError:
        # A secret chosen before secrets had to be base64: only the legacy signature.
        pass
    return headers
