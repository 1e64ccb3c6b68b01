"""A stack of the four services per test module, started exactly as `make up` starts them.

Per module, so each module's assertions about totals see only its own readings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from telemetry_tools.servers import free_port
from telemetry_tools.stack import Stack, default_services


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    services = [s.__class__(s.name, s.module, free_port()) for s in default_services()]
    running = Stack(
        data_dir=Path(tmp_path_factory.mktemp("stack")),
        kafka_port=free_port(),
        controller_port=free_port(),
        mongo_port=free_port(),
        services=services,
        echo_logs=False,
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
