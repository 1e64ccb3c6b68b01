"""Organizations and projects through dashboard-api on the real MongoDB wire server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from dashboard_api.app import create_app
from fastapi.testclient import TestClient
from telemetry_common.api_keys import issue_key
from telemetry_common.settings import DashboardSettings
from telemetry_common.tenancy import DEFAULT_ORG

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
