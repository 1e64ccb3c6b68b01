"""The web dashboard's files are served from the package, whole, with nothing from elsewhere."""

from __future__ import annotations

import re

import pytest
from dashboard_api.app import create_app
from dashboard_api.ui import STATIC
from fastapi.testclient import TestClient
from telemetry_common.infra.settings import DashboardSettings

# No lifespan: these routes need neither MongoDB nor Kafka.
client = TestClient(create_app(DashboardSettings(rollup_resolutions="1m,1h,5m")))
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_a_browser_at_the_root_is_sent_to_the_dashboard() -> None:
    response = client.get("/", headers={"Accept": BROWSER_ACCEPT}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (307, "/ui/")


@pytest.mark.parametrize("accept", ["*/*", "application/json", None])
def test_an_api_client_at_the_root_keeps_the_json_banner(accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/", headers=headers, follow_redirects=False)
    assert response.status_code == 200
    assert response.json()["message"] == "IoT telemetry dashboard API"


def test_the_page_and_every_file_it_names_are_served_same_origin_only() -> None:
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"#:]+)"', page.text)
    assert {"app.js", "app.css", "vendor/uplot/uPlot.iife.min.js"} <= set(assets)
    imports = [re.findall(r'from "\./([^"]+)"', js.read_text()) for js in STATIC.glob("*.js")]
    modules = {name for names in imports for name in names}
    assert {"core.js", "fleet.js", "device.js", "alerts.js", "system.js"} <= modules
    for asset in [*assets, *modules]:
        response = client.get(f"/ui/{asset}")
        assert response.status_code == 200, asset
        if asset.endswith(".js"):  # modules load only with a script type
            assert "javascript" in response.headers["content-type"], asset


def test_no_file_of_the_page_loads_anything_from_the_internet() -> None:
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            text = path.read_text()
            # uPlot's source names its SVG namespace; nothing is fetched from it.
            fetched = re.findall(r"""(?:src=|href=|url\(|import |fetch\()["']?https?://""", text)
            assert fetched == [], path


def test_vendored_uplot_keeps_its_licence() -> None:
    assert "MIT License" in (STATIC / "vendor" / "uplot" / "LICENSE").read_text()


def test_the_page_learns_the_stored_resolutions_finest_first() -> None:
    config = client.get("/ui/config.json").json()
    assert config["resolutions"] == ["1m", "5m", "1h"]
    assert config["api_keys_required"] is False
