"""Alert rules as stored in MongoDB: written by dashboard-api, evaluated by alerts-worker.

One model for both sides, so a rule the API accepted is a rule the worker can
evaluate. Validation errors name the field (k, clear_threshold, ...) and why.
The environment's thresholds (TEMP_*, HUMIDITY_*) become the built-in rules (``builtin_rules``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from operator import eq, ge, gt, le, lt, ne
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from telemetry_common.domain.identifiers import (
    DEVICE_ID_PATTERN,
    DURATION_PATTERN,
    DURATION_RE,
    METRIC_NAME_PATTERN,
)
from telemetry_common.domain.resolutions import UNIT_SECONDS
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT

Operator = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
Scope = Literal["all", "tag", "devices"]
# threshold: a value past a number; rate: its change per second over a window past
# a number; anomaly: a value unusual for its device (its baseline learned as it goes);
# absent: no reading (or no value of the metric) from a device for `for`.
Kind = Literal["threshold", "rate", "anomaly", "absent"]
KINDS_WITH_A_THRESHOLD = ("threshold", "rate")
# Judged on each value; an absent rule is judged on the time since the last one.
KINDS_JUDGING_VALUES = ("threshold", "rate", "anomaly")

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": gt,
    ">=": ge,
    "<": lt,
    "<=": le,
    "==": eq,
    "!=": ne,
}
# How an alert_type names a rule's breach: `temperature_c_high` for a reading's
# `temperature_c` above its maximum.
OPERATOR_WORDS = {
    ">": "high",
    ">=": "high",
    "<": "low",
    "<=": "low",
    "==": "equal",
    "!=": "changed",
}
RELATIONS = {
    ">": "above",
    ">=": "at or above",
    "<": "below",
    "<=": "at or below",
    "==": "equal to",
    "!=": "not equal to",
}

MAX_WINDOW = 100


def duration_seconds(text: str) -> int:
    """'30s', '5m', '2h', '1d' (and '0s') -> seconds."""
    match = DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"duration {text!r} is not like 0s, 30s, 5m, 2h or 1d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


class RuleCreate(BaseModel):
    """A new rule: a name; a metric (but for an absent rule, where it is optional);
    operator and threshold for a threshold or rate rule; `for` for an absent rule.

    Fields are checked one by one here, and together by ``check_rule``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=100, examples=["Server room too hot"])
    metric: str | None = Field(
        None,
        pattern=METRIC_NAME_PATTERN,
        description="the metric judged; required but for an `absent` rule, where null "
        "means any reading",
        examples=["temperature_c"],
    )
    kind: Kind = Field(
        "threshold",
        description="`threshold`: a value past `threshold`; `rate`: the value's change per "
        "second over `window` past `threshold`; `anomaly`: a value more than `deviations` "
        "standard deviations from the device's own baseline; `absent`: no reading (or no "
        "value of `metric`) from a device for `for`",
        examples=["threshold"],
    )
    operator: Operator | None = Field(
        None, description="threshold and rate rules: how the value compares", examples=[">"]
    )
    threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="threshold rules: the value; rate rules: units per second",
        examples=[30.0],
    )
    window: str = Field(
        "1m",
        pattern=DURATION_PATTERN,
        description="rate rules: the span (reading time) the change is measured over",
        examples=["5m"],
    )
    deviations: float = Field(
        4.0,
        gt=0,
        le=1000,
        allow_inf_nan=False,
        description="anomaly rules: how many standard deviations from the device's baseline fire",
        examples=[4.0],
    )
    clear_deviations: float | None = Field(
        None,
        gt=0,
        le=1000,
        allow_inf_nan=False,
        description="anomaly rules: an active anomaly resolves once values are within this "
        "many; null: half of `deviations`",
        examples=[2.0],
    )
    warmup: int = Field(
        30,
        ge=2,
        le=100_000,
        description="anomaly rules: readings a device's baseline learns from before it may fire",
        examples=[30],
    )
    severity: Severity = Field("warning", examples=["critical"])
    scope: Scope = Field(
        "all",
        description="`all` devices, devices whose readings carry `tag`, or the listed `devices`",
        examples=["tag"],
    )
    tag: str | None = Field(None, min_length=1, max_length=128, examples=["room:101"])
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] | None = Field(
        None, min_length=1, max_length=10_000, examples=[["dev-1", "dev-2"]]
    )
    k: int = Field(
        1,
        ge=1,
        le=MAX_WINDOW,
        description="how many of the device's last `n` readings must breach",
        examples=[3],
    )
    n: int = Field(1, ge=1, le=MAX_WINDOW, description="the window, in readings", examples=[5])
    for_: str = Field(
        "0s",
        alias="for",
        pattern=DURATION_PATTERN,
        description="how long the k-of-n condition must hold before the alert fires, "
        "in reading time, 0s firing at once; for an `absent` rule, how long a device "
        "may stay silent (required, at least 1s)",
        examples=["1m"],
    )
    cooldown: str = Field(
        "0s",
        pattern=DURATION_PATTERN,
        description="after an alert of this rule fires for a device, the next one for that "
        "device waits at least this long (reading time)",
        examples=["10m"],
    )
    clear_threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="hysteresis: an active alert resolves only once values are past this "
        "(below it for > and >=, above it for < and <=); null: the threshold itself",
        examples=[28.0],
    )
    enabled: bool = Field(True, examples=[True])


def _optional(info: FieldInfo) -> tuple[Any, FieldInfo]:
    optional = copy.copy(info)
    optional.default = None
    annotation = info.annotation
    assert annotation is not None, "every field of a rule is annotated"
    return annotation | None, optional


# A PATCH: any subset of the fields, each checked as on creation; the fields
# are checked together once merged with the stored rule (``check_rule``).
_OPTIONAL_FIELDS: dict[str, Any] = {
    name: _optional(info) for name, info in RuleCreate.model_fields.items()
}
RuleUpdate = create_model(
    "RuleUpdate",
    __config__=ConfigDict(extra="forbid", populate_by_name=True),
    __doc__="Fields to change; those left out keep their value.",
    **_OPTIONAL_FIELDS,
)


class RuleError(ValueError):
    """A rule whose fields contradict each other; ``field`` is the one to change."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def check_rule(rule: dict[str, Any]) -> None:
    """Checks across fields, for a new rule and for a rule after a PATCH."""
    kind = rule.get("kind") or "threshold"
    if kind != "absent" and rule.get("metric") is None:
        raise RuleError("metric", f"is required for a {kind} rule")
    if kind == "absent" and duration_seconds(rule.get("for") or "0s") == 0:
        raise RuleError("for", "is how long a device may be silent: at least 1s")
    for name in ("operator", "threshold"):
        if kind in KINDS_WITH_A_THRESHOLD and rule.get(name) is None:
            raise RuleError(name, f"is required for a {kind} rule")
        if kind not in KINDS_WITH_A_THRESHOLD and rule.get(name) is not None:
            raise RuleError(name, f"has no meaning for an {kind} rule (null it)")
    if kind == "rate" and duration_seconds(rule.get("window") or "1m") == 0:
        raise RuleError("window", "must be longer than 0s")
    clear_deviations = rule.get("clear_deviations")
    if clear_deviations is not None and clear_deviations > rule.get("deviations", 4.0):
        raise RuleError("clear_deviations", "must be at most deviations")
    if rule["k"] > rule["n"]:
        raise RuleError("k", f"must be at most n ({rule['n']})")
    scope = rule["scope"]
    if scope == "tag" and not rule.get("tag"):
        raise RuleError("tag", "is required when scope is 'tag'")
    if scope == "devices" and not rule.get("devices"):
        raise RuleError("devices", "is required when scope is 'devices'")
    if scope != "tag" and rule.get("tag") is not None:
        raise RuleError("tag", "is only allowed when scope is 'tag'")
    if scope != "devices" and rule.get("devices") is not None:
        raise RuleError("devices", "is only allowed when scope is 'devices'")
    clear = rule.get("clear_threshold")
    if clear is None:
        return
    operator, threshold = rule["operator"], rule["threshold"]
    if operator in ("==", "!="):
        raise RuleError("clear_threshold", f"has no meaning for operator {operator!r}")
    if operator in (">", ">=") and clear > threshold:
        raise RuleError("clear_threshold", f"must be at most threshold ({threshold:g})")
    if operator in ("<", "<=") and clear < threshold:
        raise RuleError("clear_threshold", f"must be at least threshold ({threshold:g})")


class Rule(BaseModel):
    """A rule as the worker evaluates it (read from its stored document)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    rule_id: str = Field(alias="_id")
    # A rule judges its own project's readings only.
    project_id: str = DEFAULT_PROJECT
    name: str
    # None: an absent rule on any reading.
    metric: str | None = None
    kind: Kind = "threshold"
    operator: Operator | None = None
    threshold: float | None = None
    window: str = "1m"
    deviations: float = 4.0
    clear_deviations: float | None = None
    warmup: int = 30
    severity: Severity = "warning"
    scope: Scope = "all"
    tag: str | None = None
    devices: frozenset[str] | None = None
    k: int = 1
    n: int = 1
    for_: str = Field("0s", alias="for")
    cooldown: str = "0s"
    clear_threshold: float | None = None
    enabled: bool = True
    builtin: bool = False
    # Built-in rules only: other names of the metric, the sensor's name and
    # unit for its messages, and how far past the threshold turns it critical.
    metric_aliases: tuple[str, ...] = ()
    sensor: str | None = None
    unit: str = ""
    critical_beyond: float | None = None
    # When a person created it: an absent rule's silence starts no earlier.
    created_at: datetime | None = None

    # Cached: read for every reading a rule meets.
    @cached_property
    def for_s(self) -> int:
        return duration_seconds(self.for_)

    @cached_property
    def for_span(self) -> timedelta:
        return timedelta(seconds=self.for_s)

    @cached_property
    def cooldown_s(self) -> int:
        return duration_seconds(self.cooldown)

    @cached_property
    def cooldown_span(self) -> timedelta:
        return timedelta(seconds=self.cooldown_s)

    @cached_property
    def window_s(self) -> int:
        return duration_seconds(self.window)

    @cached_property
    def compare(self) -> Callable[[float, float], bool]:
        """The operator of a threshold or rate rule (check_rule requires one)."""
        assert self.operator is not None, f"a {self.kind} rule without an operator"
        return OPERATORS[self.operator]

    @cached_property
    def limit(self) -> float:
        """The threshold of a threshold or rate rule (check_rule requires one)."""
        assert self.threshold is not None, f"a {self.kind} rule without a threshold"
        return self.threshold

    @cached_property
    def clear_limit(self) -> float:
        """Past which an active alert of a threshold or rate rule still holds."""
        return self.limit if self.clear_threshold is None else self.clear_threshold

    @cached_property
    def clear_at_deviations(self) -> float:
        return self.deviations / 2 if self.clear_deviations is None else self.clear_deviations

    @cached_property
    def limits(self) -> tuple[float, ...]:
        """The threshold, and the clear threshold when there is one."""
        if self.clear_threshold is None:
            return (self.limit,)
        return (self.limit, self.clear_threshold)

    @cached_property
    def _concern_limit(self) -> float | None:
        """The one limit a value must be past to concern the rule: the lower of the two
        for > and >=, the higher for < and <= (None for == and !=: each is asked)."""
        if self.operator in (">", ">="):
            return min(self.limits)
        if self.operator in ("<", "<="):
            return max(self.limits)
        return None

    @cached_property
    def metric_names(self) -> tuple[str, ...]:
        """The names a reading may give this rule's metric (none: an absent rule on any)."""
        return () if self.metric is None else (self.metric, *self.metric_aliases)

    def may_matter(self, value: float) -> bool:
        """Whether a value is past the threshold or the clear threshold (it may matter);
        every value matters to a rate or anomaly rule, which learns from each."""
        if self.kind != "threshold":
            return True
        # Asked of every rule on most readings: one comparison where one suffices.
        check, limit = self.compare, self._concern_limit
        if limit is not None:
            return check(value, limit)
        return any(check(value, limit) for limit in self.limits)

    def alert_type_of(self, metric: str) -> str:
        """The alert_type of a breach of ``metric`` (the name the reading used)."""
        if self.kind == "anomaly":
            return f"{metric}_anomaly"
        if self.kind == "absent":
            return f"{metric}_absent" if self.metric is not None else "device_offline"
        assert self.operator is not None
        word = OPERATOR_WORDS[self.operator]
        return f"{metric}_rate_{word}" if self.kind == "rate" else f"{metric}_{word}"

    def covers(self, device_id: str, tags: tuple[str, ...] | list[str]) -> bool:
        if self.scope == "devices":
            return self.devices is not None and device_id in self.devices
        if self.scope == "tag":
            return self.tag in tags
        return True

    def value_in(self, metrics: dict[str, float]) -> tuple[str, float] | None:
        """The metric this rule watches in a reading, by its name or an alias."""
        for name in self.metric_names:
            value = metrics.get(name)
            if value is not None:
                return name, value
        return None


BUILTIN_RELATIONS = {">": "above maximum", "<": "below minimum"}
# How far past a built-in threshold an alert turns critical, as a share of the
# threshold (or of the band, for a threshold of 0), as the built-in alerts have always been graded.
CRITICAL_MARGIN = 0.20


def builtin_rules(
    temp_min: float, temp_max: float, humidity_min: float, humidity_max: float
) -> list[dict[str, Any]]:
    """The environment's thresholds as rule documents (``_id`` = the alert type they raise).

    Both reading forms name temperature differently (`temperature_c` flat, `temp`
    general), so the temperature rules watch every name.
    """
    sensors = [
        ("temperature", "temperature_c", ("temperature", "temp"), "°C", temp_min, temp_max),
        ("humidity", "humidity", (), "%", humidity_min, humidity_max),
    ]
    rules = []
    for sensor, metric, aliases, unit, low, high in sensors:
        band = high - low
        for operator, threshold, word in ((">", high, "high"), ("<", low, "low")):
            base = abs(threshold) if threshold else band
            rules.append(
                {
                    "_id": f"{sensor}_{word}",
                    "name": f"{sensor.capitalize()} {BUILTIN_RELATIONS[operator]}",
                    "metric": metric,
                    "metric_aliases": list(aliases),
                    "operator": operator,
                    "threshold": threshold,
                    "severity": "warning",
                    "critical_beyond": CRITICAL_MARGIN * abs(base),
                    "sensor": sensor,
                    "unit": unit,
                    "scope": "all",
                    "k": 1,
                    "n": 1,
                    "for": "0s",
                    "cooldown": "0s",
                    "clear_threshold": None,
                    "builtin": True,
                }
            )
    return rules


class Silence(BaseModel):
    """Transitions of a matching alert are recorded but not announced until ``until``."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    silence_id: str = Field(alias="_id")
    project_id: str = DEFAULT_PROJECT
    rule_id: str | None = None
    device_id: str | None = None
    until: datetime

    def matches(self, project_id: str, rule_id: str, device_id: str, at: datetime) -> bool:
        return (
            at < self.until
            and self.project_id == project_id
            and (self.rule_id is None or self.rule_id == rule_id)
            and (self.device_id is None or self.device_id == device_id)
        )


def silenced(
    silences: Sequence[Silence], project_id: str, rule_id: str, device_id: str, at: datetime
) -> bool:
    """Whether a silence covers this rule on this device at ``at``."""
    # Asked of every rule a reading meets; most of the time there is no silence at all.
    return bool(silences) and any(s.matches(project_id, rule_id, device_id, at) for s in silences)
