"""Device API keys: issued once, stored only as hashes, optionally bound to devices.

A key is ``tk_<id>_<secret>``: the id names it in lists and revocations, the
secret is 32 random bytes. Only the SHA-256 of the whole key is stored. Keys are
random, not chosen by people, so a fast hash is enough (no password stretching),
and looking a presented key up by its hash means the time a check takes says
nothing about how much of a valid key an attacker guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import utcnow
from telemetry_common.http.api_errors import ApiError
from telemetry_common.infra.mongo import Database
from telemetry_common.infra.reloading import Reloading

log = logging.getLogger(__name__)

API_KEYS = "api_keys"
KEY_PREFIX = "tk_"
API_KEY_HEADER = "X-API-Key"
# What a key may do: post readings (``ingest``, optionally for some devices only),
# read its project's data (``read``), change its rules, silences, webhooks and
# acknowledgements (``manage``). The admin key may do everything everywhere.
Scope = Literal["ingest", "read", "manage"]
INGEST: Scope = "ingest"
READ: Scope = "read"
MANAGE: Scope = "manage"
SCOPES: tuple[Scope, ...] = (INGEST, READ, MANAGE)
ALL_SCOPES = frozenset(SCOPES)
# Both APIs declare it as their security scheme, so the OpenAPI documents (and
# Swagger's Authorize button) show it; each operation's requirement names the
# role it needs (OpenAPI 3.1 allows roles for API keys), and the authorization
# test reads them there. auto_error off: whether a key is needed is a setting.
API_KEY_SCHEME = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="an issued key (tk_...) or the admin key, needed when API_KEYS_REQUIRED is "
    "on; each operation's security names the role the key needs: ingest, read, manage or "
    "admin",
    auto_error=False,
)
# One answer for a missing key and a wrong one, so probing learns nothing.
UNAUTHORISED = "missing or not valid"


def unauthorised_error() -> ApiError:
    return ApiError(
        401,
        API_KEY_HEADER,
        UNAUTHORISED,
        headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
    )


def is_admin_key(presented: str | None, expected: SecretStr | None) -> bool:
    if expected is None or not presented:
        return False
    # compare_digest: the time taken does not depend on how much of the key matched.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.get_secret_value().encode()
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    # None: any device; otherwise the only devices this key may post for.
    devices: frozenset[str] | None
    created_at: datetime
    revoked_at: datetime | None = None
    project_id: str = DEFAULT_PROJECT
    scopes: frozenset[str] = ALL_SCOPES

    def may_post_for(self, device_id: str) -> bool:
        return self.devices is None or device_id in self.devices

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def shown_fields(self) -> dict[str, Any]:
        """What lists and responses show: never the key nor its hash."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "project_id": self.project_id,
            "scopes": sorted(self.scopes),
            "devices": sorted(self.devices) if self.devices is not None else None,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ApiKey:
        devices = doc.get("devices")
        bound = frozenset(devices) if devices is not None else None
        return cls(
            key_id=doc["_id"],
            name=doc.get("name", ""),
            devices=bound,
            created_at=doc["created_at"],
            revoked_at=doc.get("revoked_at"),
            project_id=doc.get("project_id", DEFAULT_PROJECT),
            scopes=frozenset(doc["scopes"]) if "scopes" in doc else default_scopes(bound),
        )


def default_scopes(devices: Iterable[str] | None) -> frozenset[str]:
    """What a key issued without scopes may do, as keys did before scopes: a key bound
    to devices only posts their readings; an unbound one also reads and manages."""
    return frozenset({INGEST}) if devices is not None else ALL_SCOPES


async def issue_key(
    db: Database,
    name: str,
    devices: list[str] | None = None,
    *,
    project_id: str = DEFAULT_PROJECT,
    scopes: Iterable[str] | None = None,
) -> tuple[str, ApiKey]:
    """Create a key; return the key itself (shown this once) and its record."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    doc = {
        "_id": key_id,
        "hash": hash_key(key),
        "name": name,
        "project_id": project_id,
        "scopes": sorted(set(scopes) if scopes is not None else default_scopes(devices)),
        "devices": sorted(set(devices)) if devices is not None else None,
        "created_at": utcnow(),
        "revoked_at": None,
    }
    await db[API_KEYS].insert_one(doc)
    return key, ApiKey.from_document(doc)


async def revoke_key(db: Database, key_id: str) -> ApiKey | None:
    """Mark a key revoked (kept for the record); None when there is no such key."""
    doc = await db[API_KEYS].find_one_and_update(
        {"_id": key_id, "revoked_at": None},
        {"$set": {"revoked_at": utcnow()}},
        return_document=True,
    )
    if doc is None:
        doc = await db[API_KEYS].find_one({"_id": key_id})
    return ApiKey.from_document(doc) if doc else None


async def list_keys(db: Database) -> list[ApiKey]:
    return [ApiKey.from_document(d) async for d in db[API_KEYS].find({}).sort("created_at", 1)]


class KeyCache(Reloading):
    """The valid keys by hash, reloaded from MongoDB every ``refresh_s`` seconds.

    A revocation takes effect within one refresh; until the first load succeeds
    nothing is valid.
    """

    what = "API keys"

    def __init__(self, db: Database, refresh_s: float):
        super().__init__(refresh_s)
        self._db = db
        self._by_hash: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}

    def lookup(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        return self._by_hash.get(hash_key(presented))

    def by_id(self, key_id: str) -> ApiKey | None:
        """The key, while it is valid (for what a key issued on its behalf, like a stream token)."""
        return self._by_id.get(key_id)

    async def reload(self) -> None:
        by_hash = {
            doc["hash"]: ApiKey.from_document(doc)
            async for doc in self._db[API_KEYS].find({"revoked_at": None})
        }
        self._by_hash = by_hash
        self._by_id = {key.key_id: key for key in by_hash.values()}
        self.loaded = True
