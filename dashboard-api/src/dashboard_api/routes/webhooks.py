"""Webhooks: where alert transitions are POSTed, and what became of each delivery.

Registering checks the URL against the SSRF policy (telemetry_common.infra.webhook_targets);
the alert notifier in alerts-worker checks it again at every delivery. The
signing secret is shown once, in the answer to the POST, and never again.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from telemetry_common.domain.identifiers import DEVICE_ID_PATTERN
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.domain.webhook_signature import SECRET_PREFIX, new_secret, signing_key
from telemetry_common.http.api_errors import ApiError, ErrorOut
from telemetry_common.infra.mongo import WEBHOOK_CIRCUITS, WEBHOOK_DELIVERIES, WEBHOOKS, Database
from telemetry_common.infra.webhook_targets import TargetRefused, check_target

from dashboard_api.auth import WRITE_ERRORS, Reader, Writer, read_router
from dashboard_api.deps import BAD_PARAMETER, Db, Limit, page
from dashboard_api.paging import Cursor, keyset_page
from dashboard_api.serialize import as_served

router = APIRouter(tags=["webhooks"])
# What a read key may see; the writes below need a manage key.
reads = read_router(tags=["webhooks"])

WEBHOOK_ID_PATTERN = r"^wh_[0-9a-f]{16}$"
MAX_WEBHOOKS = 100
EXAMPLE_ID = "wh_3f9a1c0e5b7d2468"
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
SIGNATURE_SCHEME = (
    "Standard Webhooks (standardwebhooks.com): webhook-id, webhook-timestamp and "
    "webhook-signature: v1,<base64 HMAC-SHA256(key, id + '.' + timestamp + '.' + body)>, "
    "key = the base64 after whsec_, decoded"
)

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
RuleId = Annotated[str, Field(min_length=1, max_length=128)]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048,
        description="http(s) URL on a public address (unless WEBHOOK_ALLOW_PRIVATE_NETWORKS "
        "or WEBHOOK_ALLOWED_TARGETS allow more)",
        examples=["https://hooks.example.com/telemetry"],
    )
    secret: str | None = Field(
        None,
        max_length=256,
        description="the signing secret, as Standard Webhooks has it: `whsec_` and the base64 "
        "of 24 to 64 random bytes; one is generated when absent",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )
    description: str | None = Field(None, max_length=200, examples=["on-call pager"])
    severity: list[Literal["warning", "critical"]] | None = Field(
        None, description="only these severities (all when absent)", examples=[["critical"]]
    )
    device_ids: list[DeviceId] | None = Field(
        None, max_length=1000, description="only these devices", examples=[["dev-1"]]
    )
    rule_ids: list[RuleId] | None = Field(
        None, max_length=1000, description="only alerts of these rules", examples=[["rule-1"]]
    )

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, secret: str | None) -> str | None:
        if secret is None:
            return None
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError(f"must start with {SECRET_PREFIX} (Standard Webhooks)")
        try:
            key = signing_key(secret)
        except ValueError:
            raise ValueError(f"must be {SECRET_PREFIX} followed by base64") from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"must hold {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
            )
        return secret


class CircuitOut(BaseModel):
    state: Literal["closed", "half_open", "open"] = Field(
        description="closed: deliveries flow; open: the URL failed repeatedly and is left "
        "alone for a cool-off; half_open: one probe is under way",
        examples=["open"],
    )
    since: str = Field(examples=["2025-01-15T10:02:00.000Z"])


class WebhookOut(BaseModel):
    webhook_id: str = Field(examples=[EXAMPLE_ID])
    url: str = Field(examples=["https://hooks.example.com/telemetry"])
    description: str | None = Field(examples=["on-call pager"])
    severity: list[str] | None = Field(examples=[["critical"]])
    device_ids: list[str] | None = Field(examples=[None])
    rule_ids: list[str] | None = Field(examples=[None])
    created_at: str = Field(examples=["2025-01-15T10:00:00.000Z"])
    created_by: str = Field(examples=["ops-key"])
    circuit: CircuitOut | None = Field(
        None,
        description="its URL's circuit breaker as the alerts worker last changed it; null "
        "until the worker has sent to it",
        examples=[None],
    )


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(
        description="the signing secret; shown in this answer only, store it now",
        examples=["whsec_q3Jz8m1XrW0pC5e9tYbV2nHkLs4uGdAa7fTiO6yMxRc="],
    )
    signature: str = Field(
        description="how each delivery is signed: Standard Webhooks",
        examples=[SIGNATURE_SCHEME],
    )


class WebhooksPage(BaseModel):
    data: list[WebhookOut]
    count: int = Field(examples=[1])
    next_cursor: str | None = Field(examples=[None])


class AttemptOut(BaseModel):
    attempt: int = Field(examples=[1])
    at: str = Field(examples=["2025-01-15T10:00:00.400Z"])
    outcome: str = Field(
        description="success, http_error, timeout, network_error or refused (SSRF guard)",
        examples=["http_error"],
    )
    status_code: int | None = Field(examples=[503])
    error: str | None = Field(examples=["HTTP 503"])
    duration_ms: float = Field(examples=[12.5])


class DeliveryOut(BaseModel):
    delivery_id: str = Field(examples=[f"{EXAMPLE_ID}:e001:temperature_high:fired"])
    webhook_id: str = Field(examples=[EXAMPLE_ID])
    notification_id: str = Field(
        description="sent as Idempotency-Key", examples=["e001:temperature_high:fired"]
    )
    alert_id: str = Field(examples=["e001:temperature_high"])
    device_id: str = Field(examples=["dev-1"])
    transition: str = Field(examples=["fired"])
    severity: str = Field(examples=["critical"])
    status: str = Field(
        description="pending (attempts left), delivered, failed (attempts exhausted), "
        "or cancelled (webhook deleted)",
        examples=["pending"],
    )
    attempt_count: int = Field(examples=[1])
    attempts: list[AttemptOut]
    next_attempt_at: str | None = Field(
        description="when the next attempt is due; null once finished",
        examples=["2025-01-15T10:00:10.400Z"],
    )
    last_error: str | None = Field(examples=["HTTP 503"])
    created_at: str = Field(examples=["2025-01-15T10:00:00.350Z"])
    delivered_at: str | None = Field(examples=[None])


class DeliveriesPage(BaseModel):
    data: list[DeliveryOut]
    count: int = Field(examples=[1])
    next_cursor: str | None = Field(examples=[None])


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "no webhook has this id", "model": ErrorOut}
}
WebhookId = Annotated[
    str, Path(pattern=WEBHOOK_ID_PATTERN, description="the webhook", examples=[EXAMPLE_ID])
]


def webhook_out(doc: dict[str, Any], circuit: dict[str, Any] | None = None) -> dict[str, Any]:
    out = as_served({k: v for k, v in doc.items() if k != "secret"}, id_name="webhook_id")
    for field in ("description", "severity", "device_ids", "rule_ids"):
        out.setdefault(field, None)
    out["circuit"] = None if circuit is None else as_served(circuit, "url")
    return out


async def circuits_of(db: Database, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stored circuit of each webhook's URL, by URL."""
    urls = list({doc["url"] for doc in docs})
    return {c["_id"]: c async for c in db[WEBHOOK_CIRCUITS].find({"_id": {"$in": urls}})}


async def find_webhook(db: Database, project_id: str, webhook_id: str) -> dict[str, Any]:
    doc = await db[WEBHOOKS].find_one({"_id": webhook_id, "project_id": project_id})
    if doc is None:
        raise ApiError(404, "webhook_id", "no webhook has this id")
    return doc


@router.post(
    "/alerts/webhooks",
    status_code=201,
    response_model=WebhookCreatedOut,
    responses={
        **WRITE_ERRORS,
        409: {
            "description": f"the project has {MAX_WEBHOOKS} webhooks already",
            "model": ErrorOut,
        },
        422: {
            "description": "a field is bad; a URL on a refused address names `url`",
            "model": ErrorOut,
            "content": {
                "application/json": {
                    "example": {
                        "detail": "url: targets 169.254.169.254, a cloud metadata address",
                        "errors": [
                            {
                                "field": "url",
                                "reason": "targets 169.254.169.254, a cloud metadata address",
                            }
                        ],
                    }
                }
            },
        },
    },
)
async def create_webhook(body: WebhookIn, db: Db, writer: Writer, request: Request) -> Any:
    """Register a webhook; the answer holds its signing secret, shown this once."""
    try:
        await check_target(body.url, request.app.state.settings.webhook_target_policy)
    except TargetRefused as exc:
        raise ApiError(422, "url", str(exc)) from None
    mine = {"project_id": writer.project_id}
    if await db[WEBHOOKS].count_documents(mine, limit=MAX_WEBHOOKS) >= MAX_WEBHOOKS:
        raise ApiError(
            409, "url", f"at most {MAX_WEBHOOKS} webhooks in a project; delete one first"
        )
    secret = body.secret or new_secret()
    doc = {
        "_id": f"wh_{secrets.token_hex(8)}",
        **mine,
        **body.model_dump(exclude={"secret"}),
        # Kept as given: the notifier signs with it, so it cannot be stored hashed.
        "secret": secret,
        "created_at": utcnow(),
        "created_by": writer.name,
    }
    await db[WEBHOOKS].insert_one(doc)
    return {
        **webhook_out(doc),
        "secret": secret,
        "signature": SIGNATURE_SCHEME,
    }


@reads.get("/alerts/webhooks", response_model=WebhooksPage, responses=BAD_PARAMETER)
async def list_webhooks(
    db: Db, caller: Reader, limit: Limit, cursor: Cursor = None
) -> dict[str, Any]:
    """Registered webhooks, newest first (without their secrets)."""
    docs, next_cursor = await keyset_page(
        db[WEBHOOKS],
        {"project_id": caller.project_id},
        sort_key="created_at",
        limit=limit,
        cursor=cursor,
    )
    circuits = await circuits_of(db, docs)
    return page([webhook_out(doc, circuits.get(doc["url"])) for doc in docs], next_cursor)


@reads.get(
    "/alerts/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses={**NOT_FOUND, **BAD_PARAMETER},
)
async def get_webhook(webhook_id: WebhookId, db: Db, caller: Reader) -> dict[str, Any]:
    """One webhook (without its secret)."""
    doc = await find_webhook(db, caller.project_id, webhook_id)
    return webhook_out(doc, (await circuits_of(db, [doc])).get(doc["url"]))


@router.delete(
    "/alerts/webhooks/{webhook_id}",
    response_model=WebhookOut,
    responses={**WRITE_ERRORS, **NOT_FOUND, **BAD_PARAMETER},
)
async def delete_webhook(webhook_id: WebhookId, db: Db, writer: Writer) -> dict[str, Any]:
    """Delete a webhook and answer what it was; its pending deliveries are cancelled,
    its delivery history is kept."""
    doc = await db[WEBHOOKS].find_one_and_delete(
        {"_id": webhook_id, "project_id": writer.project_id}
    )
    if doc is None:
        raise ApiError(404, "webhook_id", "no webhook has this id")
    await db[WEBHOOK_DELIVERIES].update_many(
        {"webhook_id": webhook_id, "status": "pending"},
        {"$set": {"status": "cancelled", "next_attempt_at": None, "last_error": "webhook deleted"}},
    )
    return webhook_out(doc)


DeliveryStatus = Annotated[
    Literal["pending", "delivered", "failed", "cancelled"] | None,
    Query(description="only deliveries in this state", examples=["failed"]),
]


@reads.get(
    "/alerts/webhooks/{webhook_id}/deliveries",
    response_model=DeliveriesPage,
    responses={**NOT_FOUND, **BAD_PARAMETER},
)
async def list_deliveries(
    webhook_id: WebhookId,
    db: Db,
    caller: Reader,
    limit: Limit,
    cursor: Cursor = None,
    status: DeliveryStatus = None,
) -> dict[str, Any]:
    """A webhook's deliveries, newest first, each with its attempts and next attempt time.

    A deleted webhook's deliveries stay listed (404 only for an id never used)."""
    query: dict[str, Any] = {"webhook_id": webhook_id, "project_id": caller.project_id}
    if status:
        query["status"] = status
    docs, next_cursor = await keyset_page(
        db[WEBHOOK_DELIVERIES], query, sort_key="created_at", limit=limit, cursor=cursor
    )
    if not docs and cursor is None and status is None:
        await find_webhook(db, caller.project_id, webhook_id)
    return page(
        [
            as_served({k: v for k, v in doc.items() if k not in ("body", "url")}, "delivery_id")
            for doc in docs
        ],
        next_cursor,
    )
