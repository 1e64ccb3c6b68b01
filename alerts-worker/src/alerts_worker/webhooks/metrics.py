"""What an operator watches of webhook delivery."""

from __future__ import annotations

from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def url_label(url: str) -> str:
    """The URL without its query string: tokens often ride there and metrics are widely read."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.recorded = Counter(
            "webhook_deliveries_recorded_total",
            "Deliveries recorded for a transition and a matching webhook",
            registry=registry,
        )
        self.skipped = Counter(
            "webhook_notifications_skipped_total",
            "alerts.triggered records with no transition to notify "
            "(alert events of the first version's kind)",
            registry=registry,
        )
        self.attempts = Counter(
            "webhook_delivery_attempts_total",
            "Delivery attempts by outcome: success, http_error, timeout, network_error, refused",
            ["outcome"],
            registry=registry,
        )
        self.finished = Counter(
            "webhook_deliveries_total",
            "Deliveries finished, by outcome: delivered, failed (attempts exhausted), cancelled",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "webhook_delivery_duration_seconds",
            "Time of one delivery attempt, resolution and connection included",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.circuit_state = Gauge(
            "webhook_circuit_state",
            "Circuit breaker per webhook URL: 0 closed, 1 half-open, 2 open",
            ["url"],
            registry=registry,
        )
        self.due = Gauge(
            "webhook_deliveries_due",
            "Pending deliveries whose next attempt time has come (the notifier's queue)",
            registry=registry,
        )
