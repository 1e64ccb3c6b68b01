"""`python -m dashboard_api` / `dashboard-api`: serve the dashboard API on PORT (8002)."""

from __future__ import annotations

from telemetry_common.http.request_id import log_filter
from telemetry_common.http.serving import serve_api
from telemetry_common.infra.logs import configure_logging
from telemetry_common.infra.settings import DashboardSettings, load_settings

from dashboard_api.app import create_app


def main() -> None:
    settings = load_settings(DashboardSettings)
    configure_logging(settings.log_level, "dashboard-api", [log_filter()])
    serve_api(create_app(settings), settings)


if __name__ == "__main__":
    main()
