"""The web dashboard in real headless Chromium, against the four services as `make up` runs them.

Chromium is Debian's (`make test` installs it); Playwright drives it. Each view
is saved as a screenshot under test-artifacts/dashboard/ for people to look at.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
import uvicorn
from dashboard_api.app import create_app
from e2e.helpers import url, wait_for
from ingestion_api.app import create_app as create_ingestion
from playwright.sync_api import Browser, Page, expect, sync_playwright
from telemetry_common.infra.settings import DashboardSettings, IngestionSettings
from telemetry_tools.servers import free_port
from telemetry_tools.stack import Stack

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("TELEMETRY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
# The stack polls and streams; under a busy machine a view may take a while to catch up.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh browser profile on the dashboard; it must load nothing from elsewhere."""
    origin = url(stack, "dashboard-api", "")
    context = browser.new_context(
        viewport={"width": 1360, "height": 900}, locale="en-US", base_url=origin
    )
    opened = context.new_page()
    elsewhere: list[str] = []
    opened.on(
        "request",
        lambda request: None if request.url.startswith(origin) else elsewhere.append(request.url),
    )
    crashes: list[str] = []
    opened.on("pageerror", lambda error: crashes.append(str(error)))
    yield opened
    context.close()
    assert elsewhere == [], "the page must work without the internet"
    assert crashes == []


def ingest(stack: Stack, readings: list[dict]) -> None:
    ingest_url = url(stack, "ingestion-api", "/ingest/batch")
    response = requests.post(ingest_url, json=readings, timeout=10)
    assert response.status_code == 200, response.text


def api(stack: Stack, path: str, **params: object) -> dict:
    response = requests.get(url(stack, "dashboard-api", path), params=params, timeout=10)
    response.raise_for_status()
    return response.json()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)  # let the charts' last frame paint
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_fleet_lists_the_devices_ingested_with_their_last_values(stack: Stack, page: Page) -> None:
    now = datetime.now(UTC)
    ingest(
        stack,
        [
            {"device_id": f"ui-fleet-{n}", "ts": now.isoformat(), "temperature_c": 20.5 + n,
             "humidity": 40.0 + n, "tags": [f"room:{n}"]}
            for n in range(3)
        ],
    )  # fmt: skip
    wait_for(lambda: api(stack, "/devices", id_prefix="ui-fleet-"), lambda b: b["count"] == 3)
    wait_for(lambda: api(stack, "/stats"), lambda s: s["total_devices"] >= 3)  # for the cards

    page.goto("/")  # a browser at the API's root lands on the dashboard
    assert page.url.endswith("/ui/")
    page.get_by_placeholder("Search device id").fill("ui-fleet-")
    rows = page.locator("#fleet-table tbody tr[data-device]")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("ui-fleet-0")
    second = page.locator('tr[data-device="ui-fleet-1"]')
    expect(second).to_contain_text("temperature_c21.5")
    expect(second).to_contain_text("humidity41")
    expect(second).to_contain_text("Reporting")
    expect(second).to_contain_text("room:1")
    screenshot(page, "fleet")

    page.emulate_media(color_scheme="dark")
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.locator("#fleet-table tbody tr[data-device]")).to_have_count(3)
    screenshot(page, "fleet-dark")


def test_an_offline_device_stands_out_and_its_page_lists_the_rules_covering_it(
    stack: Stack, page: Page
) -> None:
    rule = requests.post(
        url(stack, "dashboard-api", "/alerts/rules"),
        json={"name": "Lamp offline", "kind": "absent", "for": "2s", "scope": "devices",
              "devices": ["ui-lamp-off"]},
        timeout=10,
    )  # fmt: skip
    assert rule.status_code == 201, rule.text
    now = datetime.now(UTC).isoformat()
    lamps = ("ui-lamp-off", "ui-lamp-on")
    ingest(stack, [{"device_id": d, "ts": now, "temperature_c": 20.0} for d in lamps])

    def reported() -> dict:
        ingest(stack, [{"device_id": "ui-lamp-on", "temperature_c": 20.0}])
        return api(stack, "/devices", id_prefix="ui-lamp-", status="offline")

    wait_for(reported, lambda b: [d["device_id"] for d in b["data"]] == ["ui-lamp-off"])

    page.goto("/ui/#/fleet")
    page.get_by_placeholder("Search device id").fill("ui-lamp-")
    expect(page.locator("#fleet-table tbody tr[data-device]")).to_have_count(2)
    offline = page.locator('tr[data-device="ui-lamp-off"]')
    expect(offline).to_have_class(re.compile("offline"))
    expect(offline).to_contain_text("Offline")
    page.locator("#fleet-status").select_option("offline")
    expect(page.locator("#fleet-table tbody tr[data-device]")).to_have_count(1)
    screenshot(page, "fleet-offline")
    page.locator("#fleet-status").select_option("")  # the next tests see every device

    page.goto("/ui/#/device/ui-lamp-off")
    covering = page.locator("#device-rules tbody")
    expect(covering).to_contain_text("Lamp offline")
    expect(covering).to_contain_text("no reading for 2s")
    page.goto("/ui/#/device/ui-lamp-on")
    expect(page.locator("#device-rules tbody")).not_to_contain_text("Lamp offline")
    rule_url = url(stack, "dashboard-api", f"/alerts/rules/{rule.json()['rule_id']}")
    requests.delete(rule_url, timeout=10)
    # Its rule gone, the open alert resolves: the views after this one start with none.
    wait_for(
        lambda: api(stack, "/alerts", device_id="ui-lamp-off", status="active"),
        lambda b: b["count"] == 0,
    )


def test_a_device_chart_has_the_points_ingested_and_takes_new_ones_live(
    stack: Stack, page: Page
) -> None:
    # One reading a minute for six minutes: six one-minute buckets.
    start = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=6)
    values = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    ingest(
        stack,
        [
            {"device_id": "ui-chart", "ts": (start + timedelta(minutes=i)).isoformat(),
             "temperature_c": v, "humidity": 50.0}
            for i, v in enumerate(values)
        ],
    )  # fmt: skip
    wait_for(
        lambda: api(stack, "/devices/ui-chart/aggregates", metric="temperature_c"),
        lambda b: b["count"] == 6,
    )

    page.goto("/ui/#/device/ui-chart")
    chart = page.locator('.chart-card[data-metric="temperature_c"]')
    expect(chart).to_have_attribute("data-buckets", "6")
    expect(chart.locator(".chart-summary")).to_have_text(
        "6 buckets · 6 readings · min 20 · avg 22.5 · max 25"
    )
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator("#device-live")).to_have_text("Live")
    screenshot(page, "device")

    ingest(stack, [{"device_id": "ui-chart", "temperature_c": 31.0, "humidity": 50.0}])
    # Pushed by the device's stream: no reload.
    expect(chart).to_have_attribute("data-buckets", "7")
    expect(chart.locator(".chart-summary")).to_contain_text("max 31")
    expect(page.locator("#readings-table tbody tr").first).to_contain_text("31")
    screenshot(page, "device-live")


def test_an_alert_fired_while_the_page_is_open_appears_without_a_reload(
    stack: Stack, page: Page
) -> None:
    page.goto("/ui/#/alerts")
    expect(page.locator("#alerts-live")).to_have_text(re.compile("Live|Polling"))
    expect(page.locator("#alerts-table tbody")).to_have_text("No active alerts.")

    ingest(stack, [{"device_id": "ui-hot", "temperature_c": 80.0}])
    row = page.locator("#alerts-table tr[data-alert]", has_text="ui-hot")
    expect(row).to_be_visible()
    expect(row).to_contain_text("critical")
    expect(row).to_contain_text("80")
    expect(row).to_contain_text("active")
    expect(page.locator("#nav-active-alerts")).to_have_text("1")
    screenshot(page, "alerts")

    # A key pasted once is kept for the acknowledgements to come.
    page.locator("#key-button").click()
    page.locator("#key-input").fill("an-operator-key")
    page.locator("#key-save").click()
    page.reload()
    expect(page.locator("#key-label")).to_have_text("Key set")


def test_an_operator_acknowledges_an_alert_from_its_row(stack: Stack, page: Page) -> None:
    ingest(stack, [{"device_id": "ui-ack", "temperature_c": 80.0}])
    fired = wait_for(lambda: api(stack, "/alerts", device_id="ui-ack"), lambda b: b["count"] == 1)
    alert_id = fired["data"][0]["alert_id"]

    page.goto("/ui/#/alerts")
    page.locator("#key-button").click()
    page.locator("#key-input").fill("an-operator-key")
    page.locator("#key-save").click()
    row = page.locator(f'#alerts-table tr[data-alert="{alert_id}"]')
    with page.expect_request(lambda r: r.method == "POST") as posted:
        row.get_by_role("button", name="Acknowledge").click()
    assert unquote(posted.value.url).endswith(f"/alerts/{alert_id}/ack")
    assert posted.value.headers["x-api-key"] == "an-operator-key"
    # With keys off (as `make up` runs), the writer is recorded as anonymous.
    expect(row).to_contain_text("Acked by anonymous")
    expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
    stored = api(stack, "/alerts", device_id="ui-ack")["data"][0]
    assert stored["acknowledged_by"] == "anonymous" and stored["acknowledged_at"]
    screenshot(page, "alerts-acknowledged")


def test_system_view_shows_ingest_lag_and_dlq_from_stats(stack: Stack, page: Page) -> None:
    ingest(stack, [{"device_id": "ui-system", "temperature_c": 21.0}])
    sent_at = datetime.now(UTC)
    seen: list[dict] = []

    def settled(stats: dict) -> bool:
        # Figures gathered after the last reading was sent, with both workers caught
        # up, and the same in two gatherings: what the page shows cannot move on.
        # (A snapshot is up to a refresh old: one gathered before the earlier tests'
        # readings were stored also reads lag 0.)
        lag = stats["consumer_lag"] or {"unknown": None}
        if datetime.fromisoformat(stats["as_of"]) < sent_at or set(lag.values()) != {0}:
            return False
        if not seen or seen[-1]["as_of"] != stats["as_of"]:
            seen.append(stats)
        return len(seen) >= 2 and seen[-2]["total_readings"] == seen[-1]["total_readings"]

    stats = wait_for(lambda: api(stack, "/stats"), settled)

    page.goto("/ui/#/system")
    expect(page.locator('[data-stat="lag-aggregator-worker"] .value')).to_have_text("0records")
    expect(page.locator('[data-stat="lag-alerts-worker"] .value')).to_have_text("0records")
    expect(page.locator('[data-stat="dlq"] .value')).to_have_text("0records")
    expect(page.locator('[data-stat="readings"] .value')).to_have_text(
        f"{stats['total_readings']:,}"
    )
    expect(page.locator('[data-stat="ingest-rate"] .value')).to_contain_text("readings/s")
    expect(page.locator("#system-asof")).to_contain_text("gathered every 5 s")
    screenshot(page, "system")


ADMIN_KEY = "admin-" + "u5Pw9Zr3Kt7Mx1Qc8Lv2Hn6D"


@contextmanager
def served_in_thread(app: Any, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, bool), "the keyed API never started"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def keyed(stack: Stack) -> dict[str, Any]:
    """Settings of an API on the stack's servers that requires keys, as docker-compose runs it."""
    return {
        "kafka_bootstrap_servers": stack.kafka.bootstrap_servers,
        "mongo_url": stack.mongo.url,
        "host": "127.0.0.1",
        "port": free_port(),
        "api_keys_required": True,
        "admin_api_key": ADMIN_KEY,
        "api_keys_refresh_s": 0.2,
    }


@pytest.fixture
def keyed_dashboard(stack: Stack) -> Iterator[str]:
    """A dashboard API on the stack's data that requires keys."""
    settings = DashboardSettings(**keyed(stack))
    with served_in_thread(create_app(settings), settings.port) as base:
        yield base


@pytest.fixture
def keyed_ingestion(stack: Stack) -> Iterator[str]:
    """An ingestion API into the stack's topic that requires keys: readings go to the
    project of the key that posts them."""
    settings = IngestionSettings(**keyed(stack))
    with served_in_thread(create_ingestion(settings), settings.port) as base:
        yield base


def test_where_keys_are_required_the_dashboard_asks_for_one_and_reads_with_it(
    stack: Stack, browser: Browser, keyed_dashboard: str
) -> None:
    ingest(stack, [{"device_id": "ui-keyed", "temperature_c": 23.5}])
    issued = requests.post(
        f"{keyed_dashboard}/projects/default/api-keys",
        json={"name": "wall display", "scopes": ["read"]},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=10,
    )
    assert issued.status_code == 201, issued.text
    key = issued.json()["key"]
    wait_for(lambda: api(stack, "/devices", id_prefix="ui-keyed"), lambda b: b["count"] == 1)

    context = browser.new_context(base_url=keyed_dashboard)
    page = context.new_page()
    sent_keys: list[str | None] = []
    page.on(
        "request",
        lambda r: sent_keys.append(r.headers.get("x-api-key")) if "/devices" in r.url else None,
    )
    page.goto("/ui/")
    # Refused without a key (401), the page asks for one at once.
    expect(page.locator("#key-dialog")).to_be_visible()
    page.locator("#key-input").fill(key)
    page.locator("#key-save").click()
    expect(page.locator("#key-label")).to_have_text("Key set")
    expect(page.locator("#fleet-table tbody")).to_contain_text("ui-keyed")
    assert key in sent_keys
    # Kept for this tab's session, never in storage that outlives it.
    assert page.evaluate("sessionStorage.getItem('telemetry.apiKey')") == key
    assert page.evaluate("localStorage.getItem('telemetry.apiKey')") is None
    screenshot(page, "signed-in")
    context.close()


def test_the_admin_switches_projects_and_sees_each_ones_own_devices(
    browser: Browser, keyed_dashboard: str, keyed_ingestion: str
) -> None:
    admin = {"X-API-Key": ADMIN_KEY}

    def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = requests.post(f"{keyed_dashboard}{path}", json=body, headers=admin, timeout=10)
        assert answer.status_code == 201, answer.text
        return answer.json()

    org = created("/orgs", {"name": "Acme Facilities"})
    project = created(f"/orgs/{org['org_id']}/projects", {"name": "Cold rooms"})
    project_id = project["project_id"]
    key = created(f"/projects/{project_id}/api-keys", {"name": "gateway", "scopes": ["ingest"]})

    def posted() -> int:
        reading = {"device_id": "ui-cold-room", "temperature_c": -18.5}
        headers = {"X-API-Key": key["key"]}
        answer = requests.post(
            f"{keyed_ingestion}/ingest", json=reading, headers=headers, timeout=10
        )
        return answer.status_code

    assert wait_for(posted, lambda status: status == 202), "the project's key was never loaded"

    def project_devices() -> dict:
        answer = requests.get(
            f"{keyed_dashboard}/devices",
            params={"project_id": project_id},
            headers=admin,
            timeout=10,
        )
        return answer.json()

    wait_for(project_devices, lambda body: body["count"] == 1)

    context = browser.new_context(base_url=keyed_dashboard, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto("/ui/")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.locator("#key-input").fill(ADMIN_KEY)
    page.locator("#key-save").click()
    switch = page.locator("#project-select")
    expect(switch).to_be_visible()
    expect(switch.locator("option", has_text="Acme Facilities / Cold rooms")).to_have_count(1)
    table = page.locator("#fleet-table tbody")
    expect(table).not_to_contain_text("ui-cold-room")  # the default project's fleet

    switch.select_option(project_id)
    expect(table).to_contain_text("ui-cold-room")
    expect(table.locator("tr")).to_have_count(1)  # and nothing of the default project's
    screenshot(page, "project-switched")
    # Kept for the tab's session, like the key.
    assert page.evaluate("sessionStorage.getItem('telemetry.project')") == project_id
    switch.select_option("default")
    expect(table).not_to_contain_text("ui-cold-room")
    context.close()


def test_a_rule_made_in_the_form_fires_is_silenced_and_deleted(stack: Stack, page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # the delete's confirmation
    page.goto("/ui/#/rules")
    form = page.locator("#rule-form")
    expect(page.locator("#rules-table tbody")).to_contain_text("Temperature above maximum")
    form.locator("[name=name]").fill("UI pressure high")
    form.locator("[name=metric]").fill("ui_pressure")
    form.locator("[name=scope]").select_option("devices")
    form.locator("[name=devices]").fill("ui-rule-dev")
    form.locator("[name=severity]").select_option("critical")
    form.locator("#rule-save").click()
    # No threshold: the API's refusal is shown beside the field it names.
    threshold_error = form.locator('[data-error-for="threshold"]')
    expect(threshold_error).to_have_text("is required for a threshold rule")
    expect(form.locator('[data-field="threshold"]')).to_have_class(re.compile("invalid"))
    form.locator("[name=threshold]").fill("100")
    form.locator("#rule-save").click()
    row = page.locator("#rules-table tr[data-rule]", has_text="UI pressure high")
    expect(row).to_contain_text("ui_pressure > 100")
    expect(threshold_error).to_have_text("")
    screenshot(page, "rules")

    def breached() -> dict:
        # Again until the worker has loaded the new rule (within RULES_REFRESH_S).
        ingest(stack, [{"device_id": "ui-rule-dev", "ui_pressure": 150.0}])
        return api(stack, "/alerts", device_id="ui-rule-dev", status="active")

    wait_for(breached, lambda b: b["count"] == 1)
    page.goto("/ui/#/alerts")
    fired = page.locator("#alerts-table tr[data-alert]", has_text="ui-rule-dev")
    expect(fired).to_contain_text("UI pressure high")

    page.goto("/ui/#/rules")
    silence = page.locator("#silence-form")
    silence.locator("[name=rule_id]").select_option(label="UI pressure high")
    silence.locator("[name=device_id]").fill("ui-rule-dev")
    silence.locator("[name=comment]").fill("calibrating")
    silence.locator("#silence-save").click()
    expect(page.locator("#silences-table tbody")).to_contain_text("calibrating")
    expect(page.locator("#silences-table tbody")).to_contain_text("UI pressure high")

    page.locator("#rules-table tr[data-rule]", has_text="UI pressure high").locator(
        ".rule-delete"
    ).click()
    expect(page.locator("#rules-table tr[data-rule]", has_text="UI pressure high")).to_have_count(0)
    rules = api(stack, "/alerts/rules", limit=500)["data"]
    assert "UI pressure high" not in [r["name"] for r in rules]
    # Its alert resolves with the device's next reading, as for any deleted rule.
    ingest(stack, [{"device_id": "ui-rule-dev", "ui_pressure": 150.0}])
    wait_for(
        lambda: api(stack, "/alerts", device_id="ui-rule-dev", status="active"),
        lambda b: b["count"] == 0,
    )
