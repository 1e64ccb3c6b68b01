"""Organizations and projects through dashboard-api on the real MongoDB wire server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from integration.ingestion import ingestion_client
from telemetry_common.http.api_keys import issue_key
from telemetry_common.infra.mongo import DEVICES
from telemetry_common.infra.settings import DashboardSettings, IngestionSettings
from telemetry_common.infra.tenancy import DEFAULT_ORG, PROJECTS, ensure_tenancy

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-for-the-tenancy-tests-0123456789"


def until_default_tenant(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    """The default organization, once the app's start-up has written it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        orgs = client.get("/orgs", headers=headers).json()["data"]
        if orgs:
            return orgs[0]
        time.sleep(0.1)
    raise AssertionError("the default organization never appeared")


@pytest.fixture
def open_api(service_env: dict[str, Any]) -> Iterator[TestClient]:
    with TestClient(create_app(DashboardSettings(**service_env))) as client:
        yield client


def test_organizations_hold_projects_and_the_default_ones_always_exist(
    open_api: TestClient,
) -> None:
    default = until_default_tenant(open_api, {})
    assert (default["org_id"], default["name"]) == (DEFAULT_ORG, "Default organization")
    [default_project] = open_api.get(f"/orgs/{DEFAULT_ORG}/projects").json()["data"]
    assert default_project["project_id"] == "default"

    created = open_api.post("/orgs", json={"name": "  Acme Facilities "})
    assert created.status_code == 201
    org = created.json()
    assert org["name"] == "Acme Facilities" and org["org_id"].startswith("org-")
    assert org["created_at"].endswith("Z")
    names = []
    for name in ("Warehouse sensors", "Cold rooms", "Roof"):
        answer = open_api.post(f"/orgs/{org['org_id']}/projects", json={"name": name})
        assert answer.status_code == 201
        project = answer.json()
        assert project["org_id"] == org["org_id"] and "|" not in project["project_id"]
        names.append(project["name"])

    first = open_api.get(f"/orgs/{org['org_id']}/projects", params={"limit": 2}).json()
    rest = open_api.get(
        f"/orgs/{org['org_id']}/projects", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [p["name"] for p in first["data"] + rest["data"]] == names
    assert rest["next_cursor"] is None
    orgs = open_api.get("/orgs").json()["data"]
    assert [o["org_id"] for o in orgs] == [DEFAULT_ORG, org["org_id"]]
    # Another organization's projects are not this one's.
    assert [
        p["project_id"] for p in open_api.get(f"/orgs/{DEFAULT_ORG}/projects").json()["data"]
    ] == ["default"]


def test_bad_names_and_unknown_organizations_are_refused_naming_the_field(
    open_api: TestClient,
) -> None:
    blank = open_api.post("/orgs", json={"name": "   "})
    assert blank.status_code == 422
    assert [e["field"] for e in blank.json()["errors"]] == ["name"]
    assert open_api.post("/orgs", json={"name": "x" * 101}).status_code == 422
    assert open_api.post("/orgs", json={}).status_code == 422
    missing = open_api.post("/orgs/org-000000000000/projects", json={"name": "Roof"})
    assert missing.status_code == 404
    assert missing.json()["errors"] == [{"field": "org_id", "reason": "no such organization"}]
    assert open_api.get("/orgs/org-000000000000/projects").status_code == 404


async def test_only_the_admin_key_manages_organizations_when_keys_are_required(
    service_env: dict[str, Any], db: Any
) -> None:
    operator_key, _ = await issue_key(db, "on-call")
    settings = DashboardSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    with TestClient(create_app(settings)) as client:
        admin = {"X-API-Key": ADMIN_KEY}
        until_default_tenant(client, admin)
        for method, path, body in (
            ("post", "/orgs", {"name": "Acme"}),
            ("get", "/orgs", None),
            ("post", f"/orgs/{DEFAULT_ORG}/projects", {"name": "Roof"}),
            ("get", f"/orgs/{DEFAULT_ORG}/projects", None),
        ):
            assert client.request(method, path, json=body).status_code == 401
            wrong = client.request(method, path, json=body, headers={"X-API-Key": "tk_x_y"})
            assert wrong.status_code == 401
            operator = client.request(method, path, json=body, headers={"X-API-Key": operator_key})
            assert operator.status_code == 403, path
            assert client.request(method, path, json=body, headers=admin).status_code in (200, 201)
        created = client.post("/orgs", json={"name": "Acme"}, headers=admin).json()
        assert created["created_by"] == "admin"


async def test_a_projects_keys_are_issued_once_listed_without_secrets_and_revoked(
    service_env: dict[str, Any], db: Any
) -> None:
    settings = DashboardSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    admin = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(settings)) as client:
        until_default_tenant(client, admin)
        org = client.post("/orgs", json={"name": "Acme"}, headers=admin).json()["org_id"]
        project = client.post(f"/orgs/{org}/projects", json={"name": "Roof"}, headers=admin)
        roof = project.json()["project_id"]
        keys = f"/projects/{roof}/api-keys"

        issued = client.post(keys, json={"name": "roof ops", "scopes": ["manage"]}, headers=admin)
        assert issued.status_code == 201
        manager = issued.json()
        assert manager["key"].startswith("tk_") and manager["project_id"] == roof
        assert manager["scopes"] == ["manage"] and manager["devices"] is None
        # The project's manage key issues the project's keys, and no other project's.
        eventually_loaded(client, keys, manager["key"])
        as_manager = {"X-API-Key": manager["key"]}
        sensor = client.post(
            keys,
            json={"name": "sensor 1", "scopes": ["ingest"], "devices": ["roof-1"]},
            headers=as_manager,
        )
        assert sensor.status_code == 201
        assert sensor.json()["devices"] == ["roof-1"]
        other = client.get("/projects/default/api-keys", headers=as_manager)
        assert other.status_code == 403
        # A project's manage key works in its project, and in no other.
        silence = {"device_id": "dev-1", "until": "2999-01-01T00:00:00Z"}
        made = client.post("/alerts/silences", json=silence, headers=as_manager)
        assert made.status_code == 201
        elsewhere = client.post(
            "/alerts/silences", params={"project_id": "default"}, json=silence, headers=as_manager
        )
        assert elsewhere.status_code == 403
        assert elsewhere.json()["errors"][0]["field"] == "project_id"
        in_roof = client.get("/alerts/silences", params={"project_id": roof}, headers=admin)
        assert [x["silence_id"] for x in in_roof.json()["data"]] == [made.json()["silence_id"]]
        assert client.get("/alerts/silences", headers=admin).json()["data"] == []

        listed = client.get(keys, headers=admin).json()["data"]
        assert [k["name"] for k in listed] == ["roof ops", "sensor 1"]
        assert all("key" not in k and "hash" not in k for k in listed)
        gone = client.delete(f"{keys}/{sensor.json()['key_id']}", headers=admin)
        assert gone.status_code == 204
        [revoked] = [k for k in client.get(keys, headers=admin).json()["data"] if k["revoked_at"]]
        assert revoked["key_id"] == sensor.json()["key_id"]
        assert client.delete(f"{keys}/nope", headers=admin).status_code == 404

        bound = client.post(
            keys, json={"name": "x", "scopes": ["read"], "devices": ["roof-1"]}, headers=admin
        )
        assert (bound.status_code, bound.json()["errors"][0]["field"]) == (422, "devices")
        bad_scope = client.post(keys, json={"name": "x", "scopes": ["root"]}, headers=admin)
        assert bad_scope.status_code == 422
        assert bad_scope.json()["errors"][0]["field"].startswith("scopes")
        nowhere = client.post(
            "/projects/prj-000000000000/api-keys",
            json={"name": "x", "scopes": ["read"]},
            headers=admin,
        )
        assert nowhere.status_code == 404


def eventually_loaded(client: TestClient, path: str, key: str) -> None:
    """Until the key cache has reloaded with ``key`` (within API_KEYS_REFRESH_S)."""
    deadline = time.monotonic() + 30
    while client.get(path, headers={"X-API-Key": key}).status_code == 401:
        assert time.monotonic() < deadline, "the new key was never loaded"
        time.sleep(0.1)


def once_keys_loaded(send: Callable[[], Any]) -> Any:
    """The answer to ``send`` once the app has loaded its keys (503 until then)."""
    deadline = time.monotonic() + 30
    while (answer := send()).status_code == 503:
        assert time.monotonic() < deadline, "the keys were never loaded"
        time.sleep(0.1)
    return answer


async def test_a_keys_scopes_decide_what_it_may_do(service_env: dict[str, Any], db: Any) -> None:
    reader, _ = await issue_key(db, "wall display", scopes=["read"])
    poster, _ = await issue_key(db, "gateway", scopes=["ingest"])
    elsewhere, _ = await issue_key(db, "roof gateway", project_id="prj-roof", scopes=["ingest"])
    dashboard = DashboardSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    silence = {"device_id": "dev-1", "until": "2999-01-01T00:00:00Z"}
    with TestClient(create_app(dashboard)) as client:
        once_keys_loaded(lambda: client.get("/stats", headers={"X-API-Key": reader}))
        for key in (reader, poster):
            refused = client.post("/alerts/silences", json=silence, headers={"X-API-Key": key})
            assert refused.status_code == 403
            assert refused.json()["errors"][0]["field"] == "X-API-Key"
    ingestion = IngestionSettings(
        **service_env, api_keys_required=True, admin_api_key=ADMIN_KEY, api_keys_refresh_s=0.2
    )
    body = {"device_id": "dev-1", "temperature_c": 21.5}
    with ingestion_client(ingestion) as client:
        posted = once_keys_loaded(
            lambda: client.post("/ingest", json=body, headers={"X-API-Key": poster})
        )
        assert posted.status_code == 202
        refused = client.post("/ingest", json=body, headers={"X-API-Key": reader})
        assert refused.status_code == 403, refused.json()
        # Another project's ingest key posts into its own project (the same device id
        # there is another device).
        theirs = client.post("/ingest", json=body, headers={"X-API-Key": elsewhere})
        assert theirs.status_code == 202, theirs.json()


def test_a_project_over_its_readings_quota_is_refused_with_429_until_it_is_raised(
    service_env: dict[str, Any],
) -> None:
    admin = {"X-API-Key": ADMIN_KEY}
    keys = {"api_keys_required": True, "admin_api_key": ADMIN_KEY, "api_keys_refresh_s": 0.2}
    with TestClient(create_app(DashboardSettings(**service_env, **keys))) as dashboard:
        until_default_tenant(dashboard, admin)
        poster = dashboard.post(
            "/projects/default/api-keys",
            json={"name": "gateway", "scopes": ["ingest"]},
            headers=admin,
        ).json()["key"]
        capped = dashboard.patch(
            "/projects/default", json={"quota": {"readings_per_s": 5}}, headers=admin
        )
        assert capped.status_code == 200 and capped.json()["quota"] == {
            "readings_per_s": 5.0,
            "devices": None,
        }
        assert (
            dashboard.get("/projects/default", headers=admin).json()["quota"]["readings_per_s"] == 5
        )

        batch = [{"device_id": f"dev-{i}", "temperature_c": 20.0 + i} for i in range(5)]
        with ingestion_client(IngestionSettings(**service_env, **keys)) as ingestion:

            def post(readings: list[dict[str, Any]]) -> Any:
                return ingestion.post("/ingest/batch", json=readings, headers={"X-API-Key": poster})

            # The first answers wait for the keys and the quota to load.
            deadline = time.monotonic() + 30
            while (first := post(batch)).status_code != 429:
                assert first.status_code in (200, 503), first.json()
                assert time.monotonic() < deadline, "the quota was never applied"
                time.sleep(0.05)
            assert int(first.headers["Retry-After"]) >= 1, first.json()
            assert first.json()["errors"][0]["field"] == "project_id", first.json()
            assert "quota of 5 readings/s" in first.json()["errors"][0]["reason"]
            metrics = ingestion.get("/metrics").text
            assert (
                'ingest_project_readings_total{outcome="over_quota",project="default"} 5.0'
                in metrics
            )

            dashboard.patch(
                "/projects/default", json={"quota": {"readings_per_s": None}}, headers=admin
            )
            deadline = time.monotonic() + 30
            while post(batch).status_code != 200:
                assert time.monotonic() < deadline, "lifting the quota never took effect"
                time.sleep(0.1)


async def test_a_project_at_its_device_quota_refuses_new_devices_and_takes_its_own(
    service_env: dict[str, Any], db: Any
) -> None:
    # Two devices stored already (and another project's).
    await db[DEVICES].insert_many(
        [
            {"_id": "dev-a", "device_id": "dev-a", "project_id": "default"},
            {"_id": "dev-b", "device_id": "dev-b", "project_id": "default"},
            {"_id": "prj-roof|dev-z", "device_id": "dev-z", "project_id": "prj-roof"},
        ]
    )
    await ensure_tenancy(db)
    await db[PROJECTS].update_one({"_id": "default"}, {"$set": {"quota": {"devices": 3}}})
    poster, _ = await issue_key(db, "gateway", scopes=["ingest"])
    keys = {"api_keys_required": True, "admin_api_key": ADMIN_KEY, "api_keys_refresh_s": 0.2}
    with ingestion_client(IngestionSettings(**service_env, **keys)) as ingestion:

        def post(*devices: str) -> Any:
            readings = [{"device_id": d, "temperature_c": 21.0} for d in devices]
            return ingestion.post("/ingest/batch", json=readings, headers={"X-API-Key": poster})

        # Two new devices beside the two stored would be four: refused once loaded.
        deadline = time.monotonic() + 30
        while (refused := post("dev-c", "dev-d")).status_code != 429:
            assert refused.status_code in (200, 503), refused.json()
            assert time.monotonic() < deadline, "the device quota was never applied"
            await asyncio.sleep(0.05)
        error = refused.json()["errors"][0]
        assert error["field"] == "device_id" and "quota of 3 devices" in error["reason"]
        assert "dev-c, dev-d" in error["reason"] and refused.headers["Retry-After"]
        assert post("dev-a", "dev-b").status_code == 200  # its own devices always pass
        assert post("dev-c").status_code == 200  # the third
        assert post("dev-d").status_code == 429
        assert post("dev-c", "dev-a").status_code == 200
