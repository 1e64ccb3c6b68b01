"""Alert rules: created, listed, changed and deleted here, evaluated by the alerts worker.

The worker reloads the rules every RULES_REFRESH_S (a second by default), so a
change is evaluated from the next readings on, without a restart.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, Field
from telemetry_common.domain.alert_rules import (
    Kind,
    RuleCreate,
    RuleError,
    RuleUpdate,
    check_rule,
)
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from telemetry_common.domain.rollup_layout import scoped_id
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import ALERT_RULES, DEVICES, Database

from dashboard_api.auth import WRITE_ERRORS, Caller, Reader, Writer, read_router
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.schemas import RuleOut, RulesPage
from dashboard_api.serialize import as_served

router = APIRouter(tags=["alert rules"])
# What a read key may see; the writes below need a manage key.
reads = read_router(tags=["alert rules"])

RuleId = Annotated[str, Path(max_length=64, examples=["r-4f1c2a9b03de"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no rule has this id", "model": ErrorOut}
}
BAD_RULE: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "a field is bad, or the fields contradict each other (k above n, a "
        "clear_threshold on the wrong side, a scope without its tag or devices, a "
        "threshold rule without a threshold, an anomaly rule with one); "
        "`errors` names the field and why",
        "model": ErrorOut,
    }
}
# Only whether a built-in rule is evaluated can change: its thresholds are the
# environment's (TEMP_*/HUMIDITY_*), rewritten by the worker at every start.
BUILTIN_CHANGEABLE = frozenset({"enabled"})

CREATE_EXAMPLES = {
    "tagged room, 3 of 5": {
        "summary": "hot in room 101: 3 of the last 5 readings above 30, for a minute",
        "value": {
            "name": "Room 101 too hot",
            "metric": "temperature_c",
            "operator": ">",
            "threshold": 30,
            "severity": "critical",
            "scope": "tag",
            "tag": "room:101",
            "k": 3,
            "n": 5,
            "for": "1m",
            "cooldown": "10m",
            "clear_threshold": 28,
        },
    },
    "two devices": {
        "summary": "battery low on two devices",
        "value": {
            "name": "Battery low",
            "metric": "battery",
            "operator": "<",
            "threshold": 15,
            "scope": "devices",
            "devices": ["dev-1", "dev-2"],
        },
    },
    "anomaly": {
        "summary": "a temperature unusual for its device: 4 standard deviations off",
        "value": {
            "name": "Unusual temperature",
            "metric": "temperature_c",
            "kind": "anomaly",
            "deviations": 4,
            "warmup": 30,
        },
    },
    "rate of change": {
        "summary": "pressure falling faster than 2 units a second over a minute",
        "value": {
            "name": "Pressure dropping",
            "metric": "pressure",
            "kind": "rate",
            "operator": "<",
            "threshold": -2,
            "window": "1m",
        },
    },
    "device offline": {
        "summary": "a device in room 101 has sent no reading for 5 minutes",
        "value": {
            "name": "Room 101 sensor offline",
            "kind": "absent",
            "for": "5m",
            "scope": "tag",
            "tag": "room:101",
        },
    },
}


def _checked(rule: dict[str, Any]) -> None:
    try:
        check_rule(rule)
    except RuleError as exc:
        raise ApiError(422, exc.field, exc.reason) from None


async def _find(db: Database, project_id: str, rule_id: str) -> dict[str, Any]:
    doc = await db[ALERT_RULES].find_one({"_id": rule_id, "project_id": project_id})
    if doc is None:
        raise ApiError(404, "rule_id", "no such rule")
    return doc


async def create_rule(db: Database, rule: dict[str, Any], writer: Caller) -> dict[str, Any]:
    _checked(rule)
    now = utcnow()
    doc = {
        "_id": f"r-{secrets.token_hex(6)}",
        "project_id": writer.project_id,
        **rule,
        "builtin": False,
        "created_at": now,
        "created_by": writer.name,
        "updated_at": now,
    }
    await db[ALERT_RULES].insert_one(doc)
    return as_served(doc, "rule_id")


@router.post(
    "/alerts/rules",
    status_code=201,
    response_model=RuleOut,
    responses={**BAD_RULE, **WRITE_ERRORS},
)
async def post_rule(
    db: Db, writer: Writer, rule: Annotated[RuleCreate, Body(openapi_examples=CREATE_EXAMPLES)]
) -> dict[str, Any]:
    """Create a rule; the alerts worker evaluates it within seconds."""
    return await create_rule(db, rule.model_dump(by_alias=True), writer)


@reads.get("/alerts/rules", response_model=RulesPage, responses=BAD_PARAMETER)
async def list_rules(
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    metric: Annotated[
        str | None,
        Query(pattern=METRIC_NAME_PATTERN, description="only rules on this metric", examples=["t"]),
    ] = None,
    enabled: Annotated[
        bool | None, Query(description="only enabled (or disabled) rules", examples=[True])
    ] = None,
    builtin: Annotated[
        bool | None,
        Query(description="only the built-in rules (or only people's)", examples=[False]),
    ] = None,
    kind: Annotated[
        Kind | None, Query(description="only rules of this kind", examples=["absent"])
    ] = None,
    device_id: Annotated[
        str | None,
        Query(
            pattern=DEVICE_ID_PATTERN,
            description="only rules covering this device: on all devices, listing it, or on a "
            "tag its latest reading carried",
            examples=["dev-1"],
        ),
    ] = None,
) -> dict[str, Any]:
    """Rules, newest first, the built-in ones (the environment's thresholds) among them."""
    query: dict[str, Any] = {"project_id": caller.project_id}
    if metric:
        query["metric"] = metric
    for field, value in (("enabled", enabled), ("builtin", builtin), ("kind", kind)):
        if value is not None:
            query[field] = value
    if kind == "threshold":
        # Rules stored before kinds were threshold rules without saying so.
        query["kind"] = {"$in": ["threshold", None]}
    if device_id:
        device = await db[DEVICES].find_one(
            {"_id": scoped_id(caller.project_id, device_id)}, {"tags": 1}
        )
        tags = (device or {}).get("tags", [])
        covering = [
            {"scope": {"$in": ["all", None]}},
            {"scope": "devices", "devices": device_id},
            {"scope": "tag", "tag": {"$in": tags}},
        ]
        query = {"$and": [query, {"$or": covering}]}
    docs, next_cursor = await keyset_page(
        db[ALERT_RULES], query, sort_key="created_at", limit=limit, cursor=cursor
    )
    return page([as_served(doc, "rule_id") for doc in docs], next_cursor)


@reads.get("/alerts/rules/{rule_id}", response_model=RuleOut, responses=NOT_FOUND)
async def get_rule(db: Db, caller: Reader, rule_id: RuleId) -> dict[str, Any]:
    """One rule."""
    return as_served(await _find(db, caller.project_id, rule_id), "rule_id")


@router.patch(
    "/alerts/rules/{rule_id}",
    response_model=RuleOut,
    responses={**WRITE_ERRORS, **NOT_FOUND, **BAD_RULE},
)
async def patch_rule(
    db: Db,
    writer: Writer,
    rule_id: RuleId,
    changes: Annotated[
        RuleUpdate,
        Body(
            openapi_examples={
                "raise the threshold": {"value": {"threshold": 32, "clear_threshold": 30}},
                "disable": {"value": {"enabled": False}},
            }
        ),
    ],
) -> dict[str, Any]:
    """Change some fields of a rule; the others keep their value."""
    current = await _find(db, writer.project_id, rule_id)
    update = changes.model_dump(by_alias=True, exclude_unset=True)
    if current.get("builtin"):
        if fixed := sorted(update.keys() - BUILTIN_CHANGEABLE):
            raise ApiError(
                422,
                fixed[0],
                "a built-in rule follows the environment's thresholds; only `enabled` can change",
            )
    _checked({**current, **update})
    update.update(updated_at=utcnow(), updated_by=writer.name)
    doc = await db[ALERT_RULES].find_one_and_update(
        {"_id": rule_id, "project_id": writer.project_id}, {"$set": update}, return_document=True
    )
    if doc is None:  # deleted meanwhile
        raise ApiError(404, "rule_id", "no such rule")
    return as_served(doc, "rule_id")


@router.delete(
    "/alerts/rules/{rule_id}",
    status_code=204,
    response_class=Response,
    responses={
        **WRITE_ERRORS,
        **NOT_FOUND,
        409: {"description": "a built-in rule cannot be deleted; disable it", "model": ErrorOut},
    },
)
async def delete_rule(db: Db, writer: Writer, rule_id: RuleId) -> Response:
    """Delete a rule. Its open alerts resolve with their devices' next readings."""
    current = await _find(db, writer.project_id, rule_id)
    if current.get("builtin"):
        raise ApiError(
            409, "rule_id", "a built-in rule cannot be deleted; PATCH enabled=false instead"
        )
    await db[ALERT_RULES].delete_one({"_id": rule_id, "project_id": writer.project_id})
    return Response(status_code=204)


class ShorthandRule(BaseModel):
    """The first version's shorthand: one device, one metric, one threshold."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, examples=["dev-1"])
    metric: str = Field(pattern=METRIC_NAME_PATTERN, examples=["temperature_c"])
    op: Literal[">", ">=", "<", "<=", "==", "!="] = Field(examples=[">"])
    threshold: float = Field(allow_inf_nan=False, examples=[30.0])


@router.post(
    "/v1/alerts",
    status_code=201,
    response_model=RuleOut,
    responses={**BAD_RULE, **WRITE_ERRORS},
)
async def post_shorthand_rule(db: Db, writer: Writer, body: ShorthandRule) -> dict[str, Any]:
    """Register a rule the first version's way: it fires when the device's metric passes
    the threshold."""
    rule = RuleCreate.model_validate(
        {
            "name": f"{body.metric} {body.op} {body.threshold:g} on {body.device_id}",
            "metric": body.metric,
            "operator": body.op,
            "threshold": body.threshold,
            "scope": "devices",
            "devices": [body.device_id],
        }
    )
    return await create_rule(db, rule.model_dump(by_alias=True), writer)
