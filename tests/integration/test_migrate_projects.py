"""telemetry-migrate's projects step on the real MongoDB wire server: what was stored
before projects is served as the default project's afterwards, and nothing of
another project's is touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from pymongo.asynchronous.database import AsyncDatabase
from telemetry_common.domain.alert_rules import RuleCreate
from telemetry_common.http.api_keys import API_KEYS
from telemetry_common.infra.mongo import (
    ALERT_RULES,
    ALERT_SILENCES,
    ALERTS,
    DEVICES,
    RAW,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
)
from telemetry_common.infra.settings import DashboardSettings
from telemetry_tools.migrate import (
    OWNED_BY_PROJECTS,
    PROJECTS_MIGRATION_ID,
    backfill_projects,
    dry_run,
)

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
READINGS = 25


def before_projects() -> dict[str, list[dict[str, Any]]]:
    """Documents as the version before projects wrote them: no project_id anywhere."""
    readings = [
        {
            "_id": f"e{i:03}",
            "device_id": f"dev-{i % 3}",
            "ts": NOW - timedelta(seconds=i),
            "metrics": {"temperature_c": 20.0 + i},
            "tags": ["site:old"],
            "received_at": NOW,
        }
        for i in range(READINGS)
    ]
    devices = [
        {
            "_id": f"dev-{d}",
            "device_id": f"dev-{d}",
            "first_seen": NOW - timedelta(hours=1),
            "last_seen": NOW,
            "reading_count": 5,
            "last_values": {"temperature_c": 21.0},
        }
        for d in range(3)
    ]
    alert = {
        "_id": "e001:temperature_high",
        "alert_id": "e001:temperature_high",
        "device_id": "dev-1",
        "sensor_type": "temperature_c",
        "value": 61.0,
        "threshold": 50.0,
        "alert_type": "temperature_c_high",
        "message": "hot",
        "rule_id": "temperature_high",
        "status": "active",
        "severity": "warning",
        "created_at": NOW,
        "timestamp": NOW,
        "acknowledged_at": None,
    }
    # Every field as the API of the version before stored a rule.
    definition = RuleCreate.model_validate(
        {"name": "hot", "metric": "temperature_c", "operator": ">", "threshold": 30.0}
    )
    rule = {
        "_id": "r-0123456789ab",
        **definition.model_dump(by_alias=True),
        "builtin": False,
        "created_at": NOW,
    }
    silence = {"_id": "s-0123456789ab", "device_id": "dev-2", "until": NOW + timedelta(days=1)}
    silence |= {"rule_id": None, "comment": None, "created_at": NOW, "created_by": "admin"}
    webhook = {"_id": "wh_0123456789abcdef", "url": "https://hooks.example.com/x"}
    webhook |= {"created_at": NOW, "created_by": "admin", "secret": "whsec_x"}
    delivery = {"_id": "wh_0123456789abcdef:n1", "webhook_id": webhook["_id"], "created_at": NOW}
    key = {"_id": "k1", "name": "old key", "hash": "x" * 64, "created_at": NOW}
    return {
        RAW: readings,
        DEVICES: devices,
        ALERTS: [alert],
        ALERT_RULES: [rule],
        ALERT_SILENCES: [silence],
        WEBHOOKS: [webhook],
        WEBHOOK_DELIVERIES: [delivery],
        API_KEYS: [key],
    }


async def test_what_was_stored_before_projects_becomes_the_default_projects(
    db: AsyncDatabase, service_env: dict[str, Any]
) -> None:
    stored = before_projects()
    assert set(stored) == set(OWNED_BY_PROJECTS), "every collection a project owns is covered"
    for name, docs in stored.items():
        await db[name].insert_many(docs)
    # Another project's reading, written by the current version: left as it is.
    await db[RAW].insert_one(
        {
            "_id": "prj-a|e000",
            "event_id": "e000",
            "project_id": "prj-a",
            "device_id": "dev-0",
            "ts": NOW,
            "metrics": {"temperature_c": 1.0},
            "received_at": NOW,
        }
    )

    report = await dry_run(db)
    assert f"{READINGS + 3 + 6:,} documents without a project" in report
    assert await db[RAW].count_documents({"project_id": "default"}) == 0, "a dry run writes nothing"

    # Batches smaller than the readings: the step goes through several.
    outcome = await backfill_projects(db, batch=7)
    assert outcome.changed == {name: len(docs) for name, docs in stored.items()}
    for name, docs in stored.items():
        assert await db[name].count_documents({"project_id": "default"}) == len(docs), name
        assert await db[name].count_documents({"project_id": {"$exists": False}}) == 0, name
    assert (await db[RAW].find_one({"_id": "prj-a|e000"}))["project_id"] == "prj-a"
    state = await db["migrations"].find_one({"_id": PROJECTS_MIGRATION_ID})
    assert state is not None and state["done"]

    again = await backfill_projects(db, batch=7)
    assert again.already_done and again.changed == {}

    settings = DashboardSettings(**service_env)
    with TestClient(create_app(settings)) as api:
        readings = api.get("/telemetry", params={"limit": 100}).json()["data"]
        assert sorted(r["event_id"] for r in readings) == sorted(d["_id"] for d in stored[RAW])
        devices = api.get("/devices").json()["data"]
        assert [d["device_id"] for d in devices] == ["dev-0", "dev-1", "dev-2"]
        assert {d["device_id"]: d["open_alerts"] for d in devices}["dev-1"] == 1
        assert [a["alert_id"] for a in api.get("/alerts").json()["data"]] == [
            "e001:temperature_high"
        ]
        rules = api.get("/alerts/rules", params={"builtin": False}).json()["data"]
        assert [r["rule_id"] for r in rules] == ["r-0123456789ab"]
        silences = api.get("/alerts/silences").json()["data"]
        assert [s["silence_id"] for s in silences] == ["s-0123456789ab"]
        webhooks = api.get("/alerts/webhooks").json()["data"]
        assert [w["webhook_id"] for w in webhooks] == ["wh_0123456789abcdef"]
        # The other project's reading is its own, not the default project's.
        other = api.get("/telemetry", params={"project_id": "prj-a"})
        assert other.status_code == 404  # no such project was ever created
        assert other.json()["errors"][0]["field"] == "project_id"
