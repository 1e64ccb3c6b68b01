"""`telemetry-keys issue|list|revoke`: device API keys, straight in MongoDB.

    telemetry-keys issue --name "greenhouse 7" --devices dev-1,dev-2
    telemetry-keys list
    telemetry-keys revoke 3f9c2a1b7d4e

`issue` prints the key once; only its hash is stored. The ingestion API picks up
new and revoked keys within API_KEYS_REFRESH_S. Reads MONGO_URL and MONGO_DB
like the services, or --mongo-url / --mongo-db.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from telemetry_common.api_keys import ApiKey, issue_key, list_keys, revoke_key
from telemetry_common.mongo import connect
from telemetry_common.reading import DEVICE_ID_RE
from telemetry_common.timefmt import iso_z


def _public(key: ApiKey) -> dict[str, Any]:
    out = key.public()
    out["created_at"] = iso_z(out["created_at"])
    out["revoked_at"] = iso_z(out["revoked_at"]) if out["revoked_at"] else None
    return out


def _devices(spec: str) -> list[str]:
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devices if not DEVICE_ID_RE.fullmatch(d)]
    if bad or not devices:
        raise argparse.ArgumentTypeError(f"not device ids: {', '.join(bad) or spec!r}")
    return devices


async def run(args: argparse.Namespace) -> int:
    client = connect(args.mongo_url, "telemetry-keys")
    db = client[args.mongo_db]
    try:
        if args.command == "issue":
            key, record = await issue_key(db, args.name, args.devices)
            print(json.dumps({**_public(record), "api_key": key}, indent=2))
            print("Store the key now: it is not shown again.", file=sys.stderr)
        elif args.command == "list":
            for record in await list_keys(db):
                print(json.dumps(_public(record)))
        else:
            revoked = await revoke_key(db, args.key_id)
            if revoked is None:
                print(f"no key {args.key_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(_public(revoked)))
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="telemetry-keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mongo-url", default=os.environ.get("MONGO_URL", "mongodb://localhost:27017")
    )
    parser.add_argument("--mongo-db", default=os.environ.get("MONGO_DB", "iotdb"))
    sub = parser.add_subparsers(dest="command", required=True)
    issue = sub.add_parser("issue", help="issue a key and print it once")
    issue.add_argument("--name", required=True, help="who or what holds it")
    issue.add_argument(
        "--devices", type=_devices, default=None, help="comma-separated devices it may post for"
    )
    sub.add_parser("list", help="every key, revoked ones too; never the keys themselves")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
