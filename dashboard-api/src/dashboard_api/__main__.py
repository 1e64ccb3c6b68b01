"""`python -m dashboard_api` / `dashboard-api`: serve the dashboard API on PORT (8002)."""

from __future__ import annotations

from telemetry_common.logs import configure_logging
from telemetry_common.serving import serve_api
from telemetry_common.settings import DashboardSettings, load_settings

from dashboard_api.app import create_app


def main() -> None:
    settings = load_settings(DashboardSettings)
    configure_logging(settings.log_level, "dashboard-api")
    serve_api(create_app(settings), settings)


if __name__ == "__main__":
    main()
