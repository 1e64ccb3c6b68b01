"""`python -m alerts_worker` / `alerts-worker`: evaluate readings, record alerts, notify webhooks.

The alert notifier runs in the same process as the worker, beside it: one
deployment, one /metrics and /health port, and no extra service to scale. It
consumes alerts.triggered with its own consumer group, so the two share
nothing but the event loop; either failing stops both, and the orchestrator
restarts the process.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from telemetry_common.infra.logs import configure_logging
from telemetry_common.infra.metrics import new_registry
from telemetry_common.infra.settings import AlertsSettings, load_settings
from telemetry_common.infra.worker import run_process, stop_on_signals

from alerts_worker.webhooks.notifier import run_notifier
from alerts_worker.worker import SERVICE, run


async def run_with_notifier(settings: AlertsSettings, registry: CollectorRegistry) -> None:
    stop = stop_on_signals()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(run(settings, registry, stop))
        tasks.create_task(run_notifier(settings, registry, stop))


def main() -> None:
    settings = load_settings(AlertsSettings)
    configure_logging(settings.log_level, SERVICE)
    run_process(run_with_notifier(settings, new_registry()))


if __name__ == "__main__":
    main()
