"""What an operator watches of webhook delivery."""

from __future__ import annotations

from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from telemetry_common.infra.metrics import WORK_BUCKETS, Instruments


def url_label(url: str) -> str:
    """The URL without its query string: tokens often ride there and metrics are widely read."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry):
        on = Instruments(registry)
        self.recorded = on.counter(
            "webhook_deliveries_recorded_total",
            "Deliveries recorded for a transition and a matching webhook",
        )
        self.skipped = on.counter(
            "webhook_notifications_skipped_total",
            "alerts.triggered records with no transition to notify "
            "(alert events of the first version's kind)",
        )
        self.attempts = on.counter(
            "webhook_delivery_attempts_total",
            "Delivery attempts by outcome: success, http_error, timeout, network_error, refused",
            ["outcome"],
        )
        self.finished = on.counter(
            "webhook_deliveries_total",
            "Deliveries finished, by outcome: delivered, failed (attempts exhausted), cancelled",
            ["outcome"],
        )
        self.latency = on.histogram(
            "webhook_delivery_duration_seconds",
            "Time of one delivery attempt, resolution and connection included",
            buckets=WORK_BUCKETS,
        )
        self.circuit_state = on.gauge(
            "webhook_circuit_state",
            "Circuit breaker per webhook URL: 0 closed, 1 half-open, 2 open",
            ["url"],
        )
        self.due = on.gauge(
            "webhook_deliveries_due",
            "Pending deliveries whose next attempt time has come (the notifier's queue)",
        )
