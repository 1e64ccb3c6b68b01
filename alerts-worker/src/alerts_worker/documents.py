"""The shapes of what the alerts worker stores and publishes.

The worker owns ``alerts``, ``alert_outbox`` and ``webhook_deliveries`` (see
ARCHITECTURE.md); these name their fields once, for readers and the type
checker. Documents read back from MongoDB are plain dicts: these describe what
was written, not a validation of what comes back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, NotRequired, TypedDict

AlertStatus = Literal["active", "resolved"]
TransitionKind = Literal["fired", "resolved"]


class AlertFields(TypedDict):
    """One incident of a rule on a device, as ``alerts`` stores it (``_id``: ``alert_id``)."""

    # The reading that fired it names it: a replay of that reading names the same alert.
    alert_id: str
    event_id: str
    project_id: str
    device_id: str
    # The stored name of the metric (the contract's), beside the API's.
    sensor_type: str
    metric: str
    value: float
    threshold: float
    alert_type: str
    severity: str
    message: str
    # The firing reading's time; ``created_at`` is the worker's clock when it fired.
    timestamp: datetime
    created_at: datetime
    rule_id: str
    rule_name: str
    status: AlertStatus
    fired_at: datetime
    resolved_at: datetime | None
    # Fired under a silence: recorded, never announced.
    silenced: bool
    # "cleared" (the values went back) or "rule_changed" (the rule no longer covers it).
    resolved_reason: NotRequired[str]


class Acknowledgement(TypedDict):
    """Set by the dashboard API's acknowledge route; an alert starts unacknowledged."""

    acknowledged_at: datetime | None
    acknowledged_by: str | None


class OutboxEntry(TypedDict):
    """A transition recorded with its alert, published to ``alerts.triggered`` from here
    (``_id``: its notification id, ``<alert_id>:<transition>``)."""

    alert_id: str
    device_id: str
    transition: TransitionKind
    transition_at: datetime
    alert: AlertFields
    # The readings' partition whose worker publishes it.
    partition: int
    created_at: datetime
    notified: bool
    silenced: bool


DeliveryStatus = Literal["pending", "delivered", "failed", "cancelled"]


class DeliveryAttempt(TypedDict):
    attempt: int
    at: datetime
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: float


class Announced(TypedDict):
    """What an ``alerts.triggered`` message says of its transition, as webhooks match it."""

    notification_id: str
    alert_id: str
    project_id: str
    device_id: str
    severity: str
    transition: TransitionKind
    rule_id: str | None


class DeliveryDocument(Announced):
    """One transition owed to one webhook (``_id``: ``<webhook_id>:<notification_id>``)."""

    webhook_id: str
    url: str
    # The exact bytes signed and sent, kept so every retry sends the same.
    body: str
    status: DeliveryStatus
    attempt_count: int
    attempts: list[DeliveryAttempt]
    # None once the delivery is finished (delivered, failed or cancelled).
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None
