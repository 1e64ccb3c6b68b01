"""One log format for every service: timestamp, level, logger, message."""

from __future__ import annotations

import logging


def configure_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    # aiokafka logs every reconnect attempt at ERROR while Kafka is down; the
    # services log the outage once themselves.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
