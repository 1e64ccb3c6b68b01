"""The shapes of the names the platform takes, once: ids, metric names, widths and durations.

Each is an anchored pattern, for pydantic and FastAPI (which also show it in the
OpenAPI document), and compiled, for the parsers (``fullmatch``). Ids and metric
names become MongoDB field names and ``_id`` parts: `$`, `.` in a metric name and
`|` in any id are refused because they would be read as operators, paths or
separators (``rollup_layout.scoped_id``).
"""

from __future__ import annotations

import re

DEVICE_ID_PATTERN = r"^[A-Za-z0-9\-_.:]{1,128}$"
# A device's own event ids share its ids' shape.
EVENT_ID_PATTERN = DEVICE_ID_PATTERN
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
PROJECT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# A bucket width (1m, 15m, 1h): a count of seconds, minutes, hours or days.
RESOLUTION_PATTERN = r"^(\d+)([smhd])$"
# A rule's durations (for, cooldown), bounded so that they stay plain numbers.
DURATION_PATTERN = r"^(\d{1,7})([smhd])$"

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
METRIC_NAME_RE = re.compile(METRIC_NAME_PATTERN)
PROJECT_ID_RE = re.compile(PROJECT_ID_PATTERN)
RESOLUTION_RE = re.compile(RESOLUTION_PATTERN)
DURATION_RE = re.compile(DURATION_PATTERN)
