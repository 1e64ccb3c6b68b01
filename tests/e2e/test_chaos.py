"""The chaos scenarios of `make chaos`, shorter: every fault ends with nothing lost or doubled.

Each scenario runs on the module's stack with its own devices, so its checks see
only its own readings. RELIABILITY.md has the full-length figures.
"""

from __future__ import annotations

import pytest
from telemetry_tools.chaos import SCENARIOS, Scenario, Settings, run_scenario
from telemetry_tools.stack import Stack

pytestmark = pytest.mark.e2e

# One reading per request: `make chaos` sends batches, so the single-reading
# path meets the faults here.
SHORT = Settings(seconds=12.0, mongo_down_s=8.0, devices=20, rps_per_device=5.0, batch=1)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_nothing_acknowledged_is_lost_or_counted_twice(
    stack: Stack, scenario: Scenario
) -> None:
    outcome = await run_scenario(stack, scenario, SHORT)
    assert outcome.faults_injected > 0, "the fault was never injected"
    assert outcome.acknowledged > 0.5 * SHORT.seconds * SHORT.devices * SHORT.rps_per_device
    assert outcome.lost == 0, outcome.examples
    assert outcome.duplicated == 0, outcome.examples
    assert outcome.values_counted == outcome.values_stored, outcome.examples
    assert outcome.rollup_mismatches == 0, outcome.examples
    assert outcome.alert_violations == 0, outcome.examples
    assert outcome.dead_letters == outcome.dead_letters_expected, outcome.examples
