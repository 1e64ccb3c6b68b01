"""Reading request bodies within limits: size, gzip, JSON or NDJSON."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request
from telemetry_common.http.api_errors import ApiError


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, decompressed if gzip, refused with 413 as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body", f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body", f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        return _gunzip(body, limit)
    if encoding not in ("identity", ""):
        raise ApiError(415, "Content-Encoding", f"{encoding!r} is not supported; use gzip")
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    # Decompress at most limit+1 bytes: a gzip bomb is refused without ever
    # holding its expansion in memory.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "body", f"not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "body", f"decompressed body is larger than {limit} bytes")
    return out


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "body", f"not valid JSON: {exc}") from None


def parse_ndjson(body: bytes) -> list[Any]:
    items: list[Any] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"line {number}", f"not valid JSON: {exc}") from None
    return items


def require_json_content_type(request: Request, allowed: tuple[str, ...]) -> str:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type.lower() not in allowed:
        raise ApiError(
            415, "Content-Type", f"{media_type!r} is not accepted; send {' or '.join(allowed)}"
        )
    return media_type.lower()
