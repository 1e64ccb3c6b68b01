"""`python -m aggregator_worker` / `aggregator-worker`: consume telemetry.raw into rollups."""

from __future__ import annotations

from telemetry_common.infra.logs import configure_logging
from telemetry_common.infra.metrics import new_registry
from telemetry_common.infra.settings import AggregatorSettings, load_settings
from telemetry_common.infra.worker import run_process

from aggregator_worker.worker import SERVICE, run


def main() -> None:
    settings = load_settings(AggregatorSettings)
    configure_logging(settings.log_level, SERVICE)
    run_process(run(settings, new_registry()))


if __name__ == "__main__":
    main()
