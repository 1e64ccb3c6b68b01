"""`telemetry-dlq list|replay`: inspect the dead-letter topic and send records back.

`list` prints each dead-lettered record with the headers saying which worker
failed, why, when, where the record came from and which project it belongs to.
`replay` produces the original bytes back onto their source topic (after the
cause is fixed); the workers' idempotent writes make a replay of something
already applied harmless. Both take `--project` to handle one tenant's records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.infra.kafka import dlq
from telemetry_common.infra.kafka.producer import build_producer
from telemetry_common.infra.kafka.readings import PROJECT_HEADER, REQUEST_ID_HEADER


async def read_all(bootstrap_servers: str, topic: str, idle_s: float = 2.0) -> list[ConsumerRecord]:
    """Every record on the topic, read until it stays quiet for ``idle_s``; commits nothing."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return records
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()


def project_of(record: ConsumerRecord) -> str:
    """The project a dead-lettered record belongs to (none named: the default project's)."""
    for key, value in record.headers:
        if key == PROJECT_HEADER:
            return bytes(value).decode(errors="replace")
    return DEFAULT_PROJECT


def describe(record: ConsumerRecord) -> dict[str, Any]:
    headers = {key: value.decode(errors="replace") for key, value in record.headers}
    return {
        "dlq_offset": record.offset,
        "key": record.key.decode(errors="replace") if record.key else None,
        "worker": headers.get(dlq.HEADER_WORKER),
        "reason": headers.get(dlq.HEADER_REASON),
        "failed_at": headers.get(dlq.HEADER_FAILED_AT),
        "attempts": headers.get(dlq.HEADER_ATTEMPTS),
        "request_id": headers.get(REQUEST_ID_HEADER),
        "project_id": project_of(record),
        "source": {
            "topic": headers.get(dlq.HEADER_SOURCE_TOPIC),
            "partition": headers.get(dlq.HEADER_SOURCE_PARTITION),
            "offset": headers.get(dlq.HEADER_SOURCE_OFFSET),
        },
        "value": (record.value or b"").decode(errors="replace")[:2000],
    }


async def replay(
    bootstrap_servers: str, records: list[ConsumerRecord], target_topic: str | None
) -> int:
    producer = build_producer(bootstrap_servers, client_id="telemetry-dlq")
    await producer.start()
    try:
        sent = 0
        for record in records:
            headers = dict(record.headers)
            topic = target_topic or headers.get(dlq.HEADER_SOURCE_TOPIC, b"").decode()
            if not topic:
                print(f"skipping DLQ offset {record.offset}: no source topic", file=sys.stderr)
                continue
            # The request id and the project go back with the record; dlq.* headers do not.
            carried = [(k, v) for k, v in record.headers if k in dlq.CARRIED_HEADERS]
            await producer.send_and_wait(topic, value=record.value, key=record.key, headers=carried)
            sent += 1
        return sent
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="telemetry-dlq", description=__doc__)
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--topic", default="telemetry.dlq", help="the dead-letter topic")
    sub = parser.add_subparsers(dest="command", required=True)
    list_cmd = sub.add_parser("list", help="print every dead-lettered record as JSON lines")
    replay_cmd = sub.add_parser(
        "replay", help="produce dead-lettered records to their source topic"
    )
    for command in (list_cmd, replay_cmd):
        command.add_argument("--project", help="only this project's records")
    replay_cmd.add_argument("--worker", help="only records this worker dead-lettered")
    replay_cmd.add_argument("--to-topic", help="produce here instead of each record's source topic")
    args = parser.parse_args(argv)

    records = asyncio.run(read_all(args.bootstrap_servers, args.topic))
    if args.project:
        records = [r for r in records if project_of(r) == args.project]
    if args.command == "list":
        for record in records:
            print(json.dumps(describe(record)))
        print(f"{len(records)} dead-lettered records", file=sys.stderr)
        return
    if args.worker:
        records = [
            r for r in records if dict(r.headers).get(dlq.HEADER_WORKER) == args.worker.encode()
        ]
    sent = asyncio.run(replay(args.bootstrap_servers, records, args.to_topic))
    print(f"replayed {sent} records", file=sys.stderr)


if __name__ == "__main__":
    main()
