"""The errors this platform raises about itself, each saying whether waiting could help.

A consumer retries a transient failure forever (the batch stays uncommitted)
and sends a permanent one to the dead-letter topic; errors of the libraries
underneath are sorted by what they say of themselves (``kafka.consumer.is_transient``).
"""

from __future__ import annotations


class TelemetryError(Exception):
    # True: the same call may succeed later (a dependency is away or busy).
    transient: bool = False
