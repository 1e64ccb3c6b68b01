"""`python -m ingestion_api` / `ingestion-api`: serve the ingestion API on PORT (8001)."""

from __future__ import annotations

from telemetry_common.http.request_id import log_filter
from telemetry_common.http.serving import serve_api
from telemetry_common.infra.logs import configure_logging
from telemetry_common.infra.settings import IngestionSettings, load_settings

from ingestion_api.app import create_app


def main() -> None:
    settings = load_settings(IngestionSettings)
    configure_logging(settings.log_level, "ingestion-api", [log_filter()])
    serve_api(create_app(settings), settings)


if __name__ == "__main__":
    main()
