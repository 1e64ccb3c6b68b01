"""`python -m dashboard_api` / `dashboard-api`: serve the dashboard API on PORT (8002)."""

from __future__ import annotations

import uvicorn
from telemetry_common.logs import configure_logging
from telemetry_common.settings import DashboardSettings, load_settings

from dashboard_api.app import create_app


def main() -> None:
    settings = load_settings(DashboardSettings)
    configure_logging(settings.log_level, "dashboard-api")
    # On SIGTERM uvicorn stops accepting, finishes in-flight requests (sse-starlette
    # ends open streams at once), then runs the lifespan exit, which stops the
    # background tasks (stats, alert feed, live feeds) and closes MongoDB.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines go through our JSON formatter
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.http_keep_alive_s,
    )


if __name__ == "__main__":
    main()
