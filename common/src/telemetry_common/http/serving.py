"""How both APIs run: one uvicorn process each, as in production."""

from __future__ import annotations

import gc

import uvicorn
from starlette.types import ASGIApp

from telemetry_common.infra.settings import DashboardSettings, IngestionSettings


def serve_api(app: ASGIApp, settings: IngestionSettings | DashboardSettings) -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C; the benchmark serves its variants through this.

    On SIGTERM uvicorn stops accepting, finishes the requests under way
    (sse-starlette ends open streams at once), then runs the app's lifespan exit,
    which stops its background work (the ingestion API flushes its producer).
    """
    # Everything built so far (FastAPI, pydantic, the app) lives as long as the
    # process: moved out of the collector's sight, so a full collection scans only
    # what requests create. Unfrozen, those collections were most of the p99
    # under /ingest load (BENCHMARKS.md, design choices).
    gc.collect()
    gc.freeze()
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
