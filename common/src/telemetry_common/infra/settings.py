"""Configuration from environment variables, validated once at start.

Every service builds its settings in ``main()`` (or the FastAPI lifespan), never at
import time, so tests can start a service against their own Kafka and MongoDB.
A bad value stops the service with a message that names the variable.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemetry_common.domain.resolutions import (
    DEFAULT_MATERIALIZED,
    DEFAULT_RESOLUTIONS,
    DEFAULT_ROLLUP_RETENTION,
    RollupPlan,
    parse_duration,
    parse_resolutions,
    parse_retention,
)
from telemetry_common.infra.webhook_targets import TargetPolicy, parse_allowed_targets


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    kafka_bootstrap_servers: str = Field("localhost:9092", min_length=1)
    mongo_url: str = Field("mongodb://localhost:27017", pattern=r"^mongodb(\+srv)?://")
    mongo_db: str = Field("iotdb", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    telemetry_topic: str = Field("telemetry.raw", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    dlq_topic: str = Field("telemetry.dlq", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    alerts_topic: str = Field("alerts.triggered", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error)$")
    host: str = "0.0.0.0"
    # Longer than a load balancer's idle timeout (60 s on most) and than any
    # Retry-After we send, so a client never reuses a connection the server is
    # closing at that moment (uvicorn's own default is 5 s).
    http_keep_alive_s: int = Field(75, ge=1, le=3600)


class WorkerSettings(CommonSettings):
    max_retries: int = Field(3, ge=1, le=100)
    # Records per poll: one poll is one fold, one bulk write and one commit.
    consumer_max_records: int = Field(2000, ge=1, le=100_000)
    consumer_fetch_partition_bytes: int = Field(1_048_576, ge=65_536, le=256 * 1_048_576)
    retry_backoff_initial_s: float = Field(0.5, gt=0, le=60)
    retry_backoff_max_s: float = Field(30.0, gt=0, le=600)


class RollupSettings(BaseSettings):
    """Which resolutions are rolled up: the aggregator writes them, the dashboard serves them."""

    rollup_resolutions: str = DEFAULT_RESOLUTIONS
    # Of those, the ones written; the others are merged from these when read.
    rollup_materialized: str = DEFAULT_MATERIALIZED

    @field_validator("rollup_resolutions", "rollup_materialized")
    @classmethod
    def _known_resolutions(cls, value: str) -> str:
        parse_resolutions(value)
        return value

    @property
    def resolutions(self) -> dict[str, int]:
        """Every resolution served."""
        return parse_resolutions(self.rollup_resolutions)

    @property
    def rollup_plan(self) -> RollupPlan:
        return RollupPlan.of(self.resolutions, parse_resolutions(self.rollup_materialized))


class AggregatorSettings(WorkerSettings, RollupSettings):
    port: int = Field(8003, ge=1, le=65535)
    consumer_group: str = "aggregator-worker"
    # Larger than the other workers': a device's hour and day buckets and its
    # summary are written once per batch however many of its readings it holds,
    # so a backlog drains faster in big batches; a worker that has caught up
    # gets small ones, written at once.
    consumer_max_records: int = Field(50_000, ge=1, le=100_000)
    consumer_fetch_partition_bytes: int = Field(8 * 1_048_576, ge=65_536, le=256 * 1_048_576)
    # Buckets and device summaries held in memory between batches (the least
    # recently folded are let go first; one needed again is read back once).
    aggregator_state_buckets: int = Field(100_000, ge=1_000, le=10_000_000)
    aggregator_state_devices: int = Field(100_000, ge=1_000, le=10_000_000)
    # RAW_RETENTION (e.g. 7d, 36h) wins over the older RAW_RETENTION_DAYS.
    raw_retention: str | None = None
    raw_retention_days: float = Field(7.0, gt=0)
    rollup_retention: str = DEFAULT_ROLLUP_RETENTION

    @field_validator("raw_retention")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("rollup_retention")
    @classmethod
    def _retention_of_rolled_up_resolutions(cls, value: str, info: ValidationInfo) -> str:
        resolutions_spec = info.data.get("rollup_resolutions")
        if resolutions_spec is None:
            return value  # ROLLUP_RESOLUTIONS is refused on its own
        resolutions = parse_resolutions(resolutions_spec)
        if value == DEFAULT_ROLLUP_RETENTION:
            # The default names the five default resolutions; a custom list keeps
            # the default for those it shares with it.
            value = ",".join(e for e in value.split(",") if e.split("=")[0] in resolutions)
        parse_retention(value, resolutions)
        return value

    @property
    def raw_retention_period(self) -> timedelta:
        if self.raw_retention is not None:
            return parse_duration(self.raw_retention)
        return timedelta(days=self.raw_retention_days)

    @property
    def retention(self) -> dict[str, timedelta | None]:
        """How long each resolution's buckets are kept after their last write (None: forever)."""
        return parse_retention(self.rollup_retention, self.resolutions)

    @property
    def stored_retention(self) -> dict[str, timedelta | None]:
        """Retention of each stored resolution, long enough for those merged from it."""
        return self.rollup_plan.stored_retention(self.retention)


class WebhookTargetSettings(BaseSettings):
    """Where webhooks may point: public addresses only, unless an operator allows more (SSRF)."""

    webhook_allow_private_networks: bool = False
    # Comma-separated CIDRs and host names reachable even though they are not
    # public, e.g. "10.20.0.0/16,hooks.internal"; cloud metadata needs a CIDR here.
    webhook_allowed_targets: str = ""

    @field_validator("webhook_allowed_targets")
    @classmethod
    def _targets(cls, value: str) -> str:
        parse_allowed_targets(value)
        return value

    @property
    def webhook_target_policy(self) -> TargetPolicy:
        networks, hosts = parse_allowed_targets(self.webhook_allowed_targets)
        return TargetPolicy(self.webhook_allow_private_networks, networks, hosts)


class WebhookDeliverySettings(WebhookTargetSettings):
    """How the alert notifier delivers webhooks: retries, circuit breaker, bounds."""

    notifier_consumer_group: str = "alert-notifier"
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_max_attempts: int = Field(8, ge=1, le=50)
    # Attempt n waits between half and all of initial * 2^(n-1), capped at max:
    # about 10 s, 20 s, 40 s ... so 8 attempts span roughly 20 minutes.
    webhook_backoff_initial_s: float = Field(10.0, gt=0, le=3600)
    webhook_backoff_max_s: float = Field(3600.0, gt=0, le=86_400)
    # Consecutive failures of one URL that open its circuit, and how long it stays open.
    webhook_circuit_failures: int = Field(5, ge=1, le=1000)
    webhook_circuit_cooloff_s: float = Field(60.0, gt=0, le=3600)
    webhook_concurrency: int = Field(16, ge=1, le=256)
    # How often due deliveries are looked for when no new notification woke the notifier.
    webhook_poll_interval_s: float = Field(1.0, gt=0, le=60)


class AlertsSettings(WorkerSettings, WebhookDeliverySettings):
    port: int = Field(8004, ge=1, le=65535)
    consumer_group: str = "alerts-worker"
    # Each batch costs a fixed chain of round trips (event ids, states, alerts,
    # outbox), so a worker behind drains faster in large batches; one that has
    # caught up gets small batches, written at once.
    consumer_max_records: int = Field(20_000, ge=1, le=100_000)
    consumer_fetch_partition_bytes: int = Field(4 * 1_048_576, ge=65_536, le=256 * 1_048_576)
    # Devices whose rule states are held in memory between batches (the least
    # recently seen are let go first; one seen again is read back once).
    alerts_state_devices: int = Field(200_000, ge=1_000, le=10_000_000)
    temp_min_threshold: float = -10.0
    temp_max_threshold: float = 50.0
    humidity_min_threshold: float = 0.0
    humidity_max_threshold: float = 100.0
    # How soon a rule changed through dashboard-api is evaluated (one small read each time).
    rules_refresh_s: float = Field(1.0, gt=0, le=3600)
    # How often the learned state (k-of-n and rate windows, anomaly baselines, when
    # each device was last heard from) is written. Every reading changes it, so
    # writing it with every batch costs a write per device per batch; an alert's own
    # state is written with the alert at once. A crash replays at most this much of
    # each partition (the commits name where). 0 writes everything at every batch.
    # 30 s, Kafka Streams' commit interval: every device that reported is written once
    # per interval, and at 10 s those writes took a fifth of the alerts worker's time
    # with learning rules on every device (BENCHMARKS.md, design choices).
    checkpoint_interval_s: float = Field(30.0, ge=0, le=300)


class KeySettings(BaseSettings):
    """Who may write: device API keys (issued, stored as hashes) and the admin key.

    Both APIs read the same keys, so a key revoked once is refused by both.
    """

    api_keys_required: bool = False
    # Guards the admin endpoints; unset means they answer 401 to everyone.
    admin_api_key: SecretStr | None = None
    api_keys_refresh_s: float = Field(5.0, gt=0, le=3600)

    @field_validator("admin_api_key")
    @classmethod
    def _not_a_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (
            len(value.get_secret_value()) < 24 or "change" in value.get_secret_value().lower()
        ):
            raise ValueError("must be a random secret of 24 characters or more, not a placeholder")
        return value


class IngestionSettings(CommonSettings, KeySettings):
    port: int = Field(8001, ge=1, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch_readings: int = Field(5000, ge=1, le=100_000)
    # Readings stamped further ahead than this are refused: a device whose clock
    # is wrong would otherwise pin its rollups and "last seen" in the future.
    max_future_skew_s: float = Field(86_400.0, ge=0)
    kafka_send_timeout_s: float = Field(10.0, gt=0, le=120)
    retry_after_s: int = Field(5, ge=1, le=3600)
    # Readings handed to the producer and not yet acknowledged. Past this the API
    # answers 503 at once instead of queueing without bound while Kafka is slow.
    max_in_flight_readings: int = Field(50_000, ge=1)
    # Event ids acknowledged lately, so a retried batch is answered "duplicate"
    # without publishing again (the workers would drop it anyway).
    recent_event_ids: int = Field(200_000, ge=0)
    # Per device, in readings: a sustained rate and a burst that lets one full
    # batch of backfill through. 0 turns the limit off.
    device_rate_limit: float = Field(100.0, ge=0)
    device_rate_burst: float = Field(5000.0, ge=1)
    # Single readings (/ingest) of one device handled at once; its further
    # requests wait their turn, up to the second number, then get 429. This,
    # not the rate, is what keeps a flooding device from slowing the others.
    # 0 turns it off.
    device_concurrent_requests: int = Field(1, ge=0)
    device_waiting_requests: int = Field(64, ge=0)
    # Per API key, in requests.
    key_rate_limit: float = Field(1000.0, ge=0)
    key_rate_burst: float = Field(2000.0, ge=1)


class DashboardSettings(CommonSettings, RollupSettings, KeySettings, WebhookTargetSettings):
    port: int = Field(8002, ge=1, le=65535)
    # A day of one-minute buckets fits in one page.
    max_page_size: int = Field(1440, ge=1, le=100_000)
    # How often a watched device's live feed reads MongoDB (one poller per device).
    stream_poll_interval_s: float = Field(1.0, gt=0, le=60)
    # An SSE comment this often keeps proxies from closing a quiet stream.
    stream_heartbeat_s: float = Field(15.0, gt=0, le=300)
    # /stats serves figures gathered this often in the background.
    stats_refresh_s: float = Field(5.0, gt=0, le=3600)
    # Whose lag on the telemetry topic /stats reports.
    stats_consumer_groups: str = Field(
        "aggregator-worker,alerts-worker", pattern=r"^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$"
    )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment or exit naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        lines = [f"{cls.__name__}: invalid configuration"]
        for err in exc.errors():
            variable = "_".join(str(part) for part in err["loc"]).upper()
            # Secrets are never echoed, not even a wrong one.
            shown = "<hidden>" if "KEY" in variable else repr(err.get("input"))
            lines.append(f"  {variable}={shown}: {err['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
