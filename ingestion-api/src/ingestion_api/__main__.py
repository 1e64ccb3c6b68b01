"""`python -m ingestion_api` / `ingestion-api`: serve the ingestion API on PORT (8001)."""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI
from telemetry_common.logs import configure_logging
from telemetry_common.settings import IngestionSettings, load_settings

from ingestion_api.app import create_app


def serve(app: FastAPI, settings: IngestionSettings) -> None:
    """One uvicorn process, as in production; the benchmark serves its variant through this too."""
    # Everything built so far (FastAPI, pydantic, the app) lives as long as the
    # process: moved out of the collector's sight, so a full collection scans only
    # what requests create. Unfrozen, those collections were most of the p99
    # under /ingest load (BENCHMARKS.md, design choices).
    gc.collect()
    gc.freeze()
    # On SIGTERM uvicorn stops accepting, finishes in-flight requests, then runs
    # the lifespan exit, which flushes the producer.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines go through our JSON formatter
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.http_keep_alive_s,
    )


def main() -> None:
    settings = load_settings(IngestionSettings)
    configure_logging(settings.log_level, "ingestion-api")
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
