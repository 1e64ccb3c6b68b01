"""Readings as the ingestion API would publish them, for tests that produce to Kafka directly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from telemetry_common.domain.reading import Reading, parse_reading

BASE_TS = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


def reading(body: dict[str, Any]) -> Reading:
    return parse_reading(body, now=datetime.now(UTC), max_future_skew=timedelta(days=1))


def fleet_readings(devices: int, per_device: int, start: datetime = BASE_TS) -> list[Reading]:
    """Deterministic readings spread over several minutes, with a few alerts among them."""
    out = []
    for d in range(devices):
        for i in range(per_device):
            out.append(
                reading(
                    {
                        "device_id": f"dev-{d}",
                        "ts": (start + timedelta(seconds=17 * i + d)).isoformat(),
                        "temperature_c": 20.0 + (i * 7 + d * 3) % 13 + 0.25 * d,
                        "humidity": 40.0 + (i * 5 + d) % 30,
                    }
                )
            )
    return out


async def publish(producer: AIOKafkaProducer, topic: str, readings: list[Reading]) -> None:
    for r in readings:
        await producer.send(topic, r.to_kafka_value(), key=r.device_id.encode())
    await producer.flush()
