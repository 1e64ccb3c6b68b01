"""The ingestion API with nothing behind it: the ceiling for `/ingest` requests/s and p99.

Same app, same validation, same uvicorn process as `python -m ingestion_api`; only
the publisher acknowledges at once instead of waiting for Kafka. The difference
between the two is what Kafka's acknowledgement costs.
"""

from __future__ import annotations

from ingestion_api.app import create_app
from ingestion_api.publish import ReadingPublisher
from telemetry_common.domain.reading import Reading
from telemetry_common.http.request_id import log_filter
from telemetry_common.http.serving import serve_api
from telemetry_common.infra.logs import configure_logging
from telemetry_common.infra.settings import IngestionSettings, load_settings


class AcknowledgeAtOnce(ReadingPublisher):
    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(self, readings: list[Reading]) -> None:
        pass


def main() -> None:
    settings = load_settings(IngestionSettings)
    configure_logging(settings.log_level, "ingestion-api-null", [log_filter()])
    publisher = AcknowledgeAtOnce(
        settings.kafka_bootstrap_servers, settings.telemetry_topic, settings.kafka_send_timeout_s
    )
    serve_api(create_app(settings, publisher=publisher), settings)


if __name__ == "__main__":
    main()
