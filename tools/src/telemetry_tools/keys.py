"""`telemetry-keys issue|list|revoke`: API keys, straight in MongoDB.

    telemetry-keys issue --name "greenhouse 7" --devices dev-1,dev-2
    telemetry-keys issue --name "wall display" --project prj-4f1c2a9b03de --scopes read
    telemetry-keys list --project prj-4f1c2a9b03de
    telemetry-keys revoke 3f9c2a1b7d4e

`issue` prints the key once; only its hash is stored. A key belongs to a project
(`default` unless --project) and carries scopes (--scopes: ingest, read, manage;
without it, a key bound to devices only ingests and an unbound one may do all
three). Both APIs pick up new and revoked keys within API_KEYS_REFRESH_S. Reads
MONGO_URL and MONGO_DB like the services, or --mongo-url / --mongo-db.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from telemetry_common.domain.identifiers import DEVICE_ID_RE
from telemetry_common.domain.rollup_layout import DEFAULT_PROJECT
from telemetry_common.domain.timefmt import iso_z
from telemetry_common.http.api_keys import SCOPES, ApiKey, issue_key, list_keys, revoke_key
from telemetry_common.infra.mongo import connect
from telemetry_common.infra.tenancy import PROJECTS, ensure_tenancy


def _public(key: ApiKey) -> dict[str, Any]:
    out = key.shown_fields()
    out["created_at"] = iso_z(out["created_at"])
    out["revoked_at"] = iso_z(out["revoked_at"]) if out["revoked_at"] else None
    return out


def _devices(spec: str) -> list[str]:
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devices if not DEVICE_ID_RE.fullmatch(d)]
    if bad or not devices:
        raise argparse.ArgumentTypeError(f"not device ids: {', '.join(bad) or spec!r}")
    return devices


def _scopes(spec: str) -> list[str]:
    scopes = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise argparse.ArgumentTypeError(
            f"not scopes: {', '.join(bad) or spec!r} (choose from {', '.join(SCOPES)})"
        )
    return scopes


async def run(args: argparse.Namespace) -> int:
    client = connect(args.mongo_url, "telemetry-keys")
    db = client[args.mongo_db]
    try:
        if args.command == "issue":
            await ensure_tenancy(db)
            if await db[PROJECTS].find_one({"_id": args.project}, {"_id": 1}) is None:
                print(
                    f"no project {args.project!r} (see GET /orgs/{{org_id}}/projects)",
                    file=sys.stderr,
                )
                return 1
            key, record = await issue_key(
                db, args.name, args.devices, project_id=args.project, scopes=args.scopes
            )
            print(json.dumps({**_public(record), "api_key": key}, indent=2))
            print("Store the key now: it is not shown again.", file=sys.stderr)
        elif args.command == "list":
            for record in await list_keys(db):
                if args.project is None or record.project_id == args.project:
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
    issue.add_argument("--project", default=DEFAULT_PROJECT, help="the project it belongs to")
    issue.add_argument(
        "--scopes", type=_scopes, default=None, help="comma-separated: ingest, read, manage"
    )
    listing = sub.add_parser("list", help="every key, revoked ones too; never the keys themselves")
    listing.add_argument("--project", default=None, help="only this project's keys")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
