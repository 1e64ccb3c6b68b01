"""Response shapes, with the examples OpenAPI shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    # Documents may carry fields newer than this schema; pass them through.
    model_config = ConfigDict(extra="allow")


class ReadingOut(_Open):
    event_id: str = Field(examples=["e001"])
    device_id: str = Field(examples=["dev-1"])
    ts: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    received_at: str = Field(examples=["2025-01-15T10:00:00.120Z"])
    metrics: dict[str, float] = Field(examples=[{"temperature_c": 25.5, "humidity": 60.0}])
    tags: list[str] = Field(default_factory=list, examples=[["room:101"]])
    lat: float | None = None
    lon: float | None = None


PERCENTILE_NOTE = "from a DDSketch; within 1% (relative) of the exact percentile"


class RollupOut(_Open):
    device_id: str = Field(examples=["dev-1"])
    sensor_type: str = Field(examples=["temperature_c"])
    resolution: str = Field(examples=["1m"])
    timestamp: str = Field(description="bucket start", examples=["2025-01-15T10:00:00.000Z"])
    count: int = Field(examples=[12])
    sum: float = Field(examples=[306.0])
    min: float = Field(examples=[24.9])
    max: float = Field(examples=[26.1])
    average: float = Field(examples=[25.5])
    stddev: float | None = Field(None, description="population standard deviation", examples=[0.31])
    first: float | None = Field(
        None, description="value of the earliest reading in the bucket", examples=[25.1]
    )
    last: float | None = Field(
        None, description="value of the latest reading in the bucket", examples=[25.8]
    )
    p50: float | None = Field(None, description=PERCENTILE_NOTE, examples=[25.49])
    p95: float | None = Field(None, description=PERCENTILE_NOTE, examples=[26.02])
    p99: float | None = Field(None, description=PERCENTILE_NOTE, examples=[26.09])


class AlertOut(_Open):
    """One incident of a rule on a device: active while its condition holds, then resolved."""

    alert_id: str = Field(examples=["e001:temperature_high"])
    device_id: str = Field(examples=["dev-1"])
    sensor_type: str = Field(examples=["temperature_c"])
    value: float = Field(examples=[61.0])
    threshold: float = Field(examples=[50.0])
    alert_type: str = Field(examples=["temperature_c_high"])
    severity: str = Field(examples=["critical"])
    message: str = Field(examples=["Temperature 61°C on dev-1 is above maximum 50°C"])
    timestamp: str = Field(description="time of the reading", examples=["2025-01-15T10:00:00.000Z"])
    created_at: str = Field(examples=["2025-01-15T10:00:00.350Z"])
    status: str = Field(description="active or resolved", examples=["active"])
    rule_id: str | None = Field(None, examples=["temperature_high"])
    rule_name: str | None = Field(None, examples=["Temperature above maximum"])
    fired_at: str | None = Field(
        None, description="reading time it fired", examples=["2025-01-15T10:00:00.000Z"]
    )
    resolved_at: str | None = Field(
        None, description="reading time it cleared", examples=["2025-01-15T10:05:00.000Z"]
    )
    acknowledged_at: str | None = Field(None, examples=["2025-01-15T10:01:30.000Z"])
    acknowledged_by: str | None = Field(None, examples=["on-call"])
    silenced: bool | None = Field(
        None, description="a silence covered it when it fired: recorded, not announced"
    )


class RuleOut(_Open):
    rule_id: str = Field(examples=["r-4f1c2a9b03de"])
    name: str = Field(examples=["Server room too hot"])
    metric: str | None = Field(
        examples=["temperature_c"], description="null: an absent rule on any reading"
    )
    kind: str = Field("threshold", examples=["threshold"])
    operator: str | None = Field(
        None, description="null for an anomaly or absent rule", examples=[">"]
    )
    threshold: float | None = Field(
        None, description="null for an anomaly or absent rule", examples=[30.0]
    )
    window: str = Field("1m", description="rate rules", examples=["5m"])
    deviations: float = Field(4.0, description="anomaly rules", examples=[4.0])
    clear_deviations: float | None = Field(None, description="anomaly rules", examples=[2.0])
    warmup: int = Field(30, description="anomaly rules", examples=[30])
    severity: str = Field(examples=["critical"])
    scope: str = Field(examples=["tag"])
    tag: str | None = Field(None, examples=["room:101"])
    devices: list[str] | None = Field(None, examples=[None])
    k: int = Field(examples=[3])
    n: int = Field(examples=[5])
    for_: str = Field(alias="for", examples=["1m"])
    cooldown: str = Field(examples=["10m"])
    clear_threshold: float | None = Field(None, examples=[28.0])
    enabled: bool = Field(examples=[True])
    builtin: bool = Field(
        description="one of the environment's thresholds (TEMP_*/HUMIDITY_*): it can be "
        "disabled, not changed or deleted",
        examples=[False],
    )
    created_at: str | None = Field(None, examples=["2025-01-15T09:00:00.000Z"])
    created_by: str | None = Field(None, examples=["on-call"])
    updated_at: str | None = Field(None, examples=["2025-01-15T09:30:00.000Z"])


class SilenceOut(_Open):
    silence_id: str = Field(examples=["s-9a0b1c2d3e4f"])
    rule_id: str | None = Field(None, examples=["r-4f1c2a9b03de"])
    device_id: str | None = Field(None, examples=["dev-1"])
    until: str = Field(examples=["2025-01-15T12:00:00.000Z"])
    comment: str | None = Field(None, examples=["maintenance window"])
    created_at: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    created_by: str = Field(examples=["on-call"])


class DeviceOut(_Open):
    device_id: str = Field(examples=["dev-1"])
    first_seen: str = Field(examples=["2025-01-15T09:00:00.000Z"])
    last_seen: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    reading_count: int = Field(examples=[3600])
    last_values: dict[str, float] = Field(examples=[{"temperature_c": 25.5, "humidity": 60.0}])
    open_alerts: int = Field(description="alerts with status active", examples=[2])
    status: Literal["online", "offline"] = Field(
        description="`offline` while an absent rule on any reading holds the device silent "
        "(an active `device_offline` alert); `online` otherwise",
        examples=["offline"],
    )
    offline_since: str | None = Field(
        description="offline: when its last reading was received", examples=[None]
    )
    tags: list[str] = Field(
        default_factory=list, description="tags of the latest reading", examples=[["room:101"]]
    )


class IntervalBucketOut(BaseModel):
    start: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    end: str = Field(description="exclusive", examples=["2025-01-15T10:10:00.000Z"])
    count: int = Field(examples=[120])
    sum: float = Field(examples=[3060.0])
    avg: float = Field(examples=[25.5])
    min: float = Field(examples=[24.9])
    max: float = Field(examples=[26.1])
    stddev: float = Field(description="population standard deviation", examples=[0.31])
    p50: float | None = Field(None, description=PERCENTILE_NOTE, examples=[25.49])
    p95: float | None = Field(None, description=PERCENTILE_NOTE, examples=[26.02])
    p99: float | None = Field(None, description=PERCENTILE_NOTE, examples=[26.09])


class IntervalAggregateOut(BaseModel):
    metric: str = Field(examples=["temperature_c"])
    device_id: str | None = Field(description="null: every device merged", examples=["dev-1"])
    interval: str = Field(examples=["10m"])
    resolution: str = Field(description="the stored resolution merged", examples=["5m"])
    from_time: str = Field(
        description="start of the first bucket", examples=["2025-01-15T10:00:00.000Z"]
    )
    to_time: str = Field(
        description="end of the last bucket", examples=["2025-01-15T11:00:00.000Z"]
    )
    buckets: list[IntervalBucketOut]
    count: int = Field(description="number of buckets (empty intervals are left out)", examples=[6])


class WindowOut(BaseModel):
    metric: str | None = Field(
        description="null: readings of any metric", examples=["temperature_c"]
    )
    device_ids: list[str] | None = Field(
        description="the devices asked for; null: every device", examples=[["dev-1", "dev-2"]]
    )
    tag: str | None = Field(description="only readings carrying this tag", examples=[None])
    from_time: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    to_time: str = Field(examples=["2025-01-15T11:00:00.000Z"])
    served_from: list[str] = Field(
        description="where the figures came from, coarsest first: stored resolutions, "
        "and `raw` for what no stored bucket fits (the window's ragged edges, a tag)",
        examples=[["1h", "1m", "raw"]],
    )


class WindowCountOut(WindowOut):
    count: int = Field(description="readings in the window", examples=[7200])


class WindowDevicesOut(WindowOut):
    devices: int = Field(description="distinct devices that sent a reading", examples=[2])


class WindowPercentilesOut(WindowOut):
    count: int = Field(description="values the percentiles are of", examples=[7200])
    p50: float | None = Field(description=PERCENTILE_NOTE + "; null: no value", examples=[21.4])
    p95: float | None = Field(description=PERCENTILE_NOTE + "; null: no value", examples=[27.9])
    p99: float | None = Field(description=PERCENTILE_NOTE + "; null: no value", examples=[29.3])


class _Page(BaseModel):
    count: int = Field(description="items in this page", examples=[1])
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page",
        examples=["WyJ0cyIsIjIwMjUtMDEtMTVUMTA6MDA6MDAuMDAwWiIsImUwMDEiXQ"],
    )


class ReadingsPage(_Page):
    data: list[ReadingOut]


class RollupsPage(_Page):
    data: list[RollupOut]


class AlertsPage(_Page):
    data: list[AlertOut]


class RulesPage(_Page):
    data: list[RuleOut]


class SilencesPage(_Page):
    data: list[SilenceOut]


class DevicesPage(_Page):
    data: list[DeviceOut]


class StatsOut(BaseModel):
    total_readings: int = Field(examples=[1_250_000])
    total_aggregates: int = Field(
        description="rollup buckets stored: one per device, resolution and bucket start, "
        "holding all of the device's metrics in it",
        examples=[84_000],
    )
    total_alerts: int = Field(examples=[312])
    total_devices: int = Field(examples=[1000])
    active_alerts: int = Field(
        description="alerts with status active, counted up to 10000", examples=[12]
    )
    active_alerts_capped: bool = Field(
        description="true: there are at least `active_alerts` (the count stopped there)",
        examples=[False],
    )
    as_of: str = Field(
        description="when these figures were gathered (every `refresh_interval_s`, in the "
        "background)",
        examples=["2025-01-15T10:00:00.000Z"],
    )
    generated_at: str = Field(
        description="the same as `as_of`, for clients of the first version",
        examples=["2025-01-15T10:00:00.000Z"],
    )
    refresh_interval_s: float = Field(examples=[5.0])
    kafka_reachable: bool = Field(
        description="false: the Kafka figures below are null (always in a project's "
        "figures: they are the installation's)",
        examples=[True],
    )
    ingest_rate_per_s: float | None = Field(
        description="readings written to the telemetry topic per second, over the last minute; "
        "null on the first snapshot",
        examples=[1250.0],
    )
    consumer_lag: dict[str, int] | None = Field(
        description="per consumer group, telemetry records not processed yet",
        examples=[{"aggregator-worker": 40, "alerts-worker": 12}],
    )
    dlq_size: int | None = Field(description="records held in the dead-letter topic", examples=[0])


class HealthOut(BaseModel):
    status: str = Field(examples=["ok"])
    service: str = "dashboard-api"
    mongo: bool


class OrgOut(_Open):
    org_id: str = Field(examples=["org-4f1c2a9b03de"])
    name: str = Field(examples=["Acme Facilities"])
    created_at: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    created_by: str | None = Field(None, examples=["admin"])


class OrgsPage(_Page):
    data: list[OrgOut]


class QuotaOut(_Open):
    readings_per_s: float | None = Field(None, examples=[500.0])
    devices: int | None = Field(None, examples=[1000])


class ProjectOut(_Open):
    project_id: str = Field(examples=["prj-9a0b1c2d3e4f"])
    org_id: str = Field(examples=["org-4f1c2a9b03de"])
    name: str = Field(examples=["Warehouse sensors"])
    quota: QuotaOut = Field(default_factory=QuotaOut)
    created_at: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    created_by: str | None = Field(None, examples=["admin"])


class ProjectsPage(_Page):
    data: list[ProjectOut]


class KeyOut(_Open):
    key_id: str = Field(examples=["3f9c2a1b7d4e"])
    name: str = Field(examples=["greenhouse 7"])
    project_id: str = Field(examples=["default"])
    scopes: list[str] = Field(examples=[["ingest"]])
    devices: list[str] | None = Field(examples=[["dev-1", "dev-2"]])
    created_at: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    revoked_at: str | None = Field(examples=[None])


class IssuedKeyOut(KeyOut):
    key: str = Field(
        description="the key itself, shown this once",
        examples=["tk_3f9c2a1b7d4e_5mJq0yY3n0gQp1Xw7bC4a9s2LrVtE8kH6uZfDiNoWxU"],
    )


class KeysPage(_Page):
    data: list[KeyOut]
