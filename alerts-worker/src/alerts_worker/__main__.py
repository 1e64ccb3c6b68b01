"""`python -m alerts_worker` / `alerts-worker`: evaluate readings and record alerts."""

from __future__ import annotations

import asyncio

from telemetry_common.logs import configure_logging
from telemetry_common.metrics import new_registry
from telemetry_common.settings import AlertsSettings, load_settings

from alerts_worker.worker import SERVICE, run


def main() -> None:
    settings = load_settings(AlertsSettings)
    configure_logging(settings.log_level, SERVICE)
    asyncio.run(run(settings, new_registry()))


if __name__ == "__main__":
    main()
