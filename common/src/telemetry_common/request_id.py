"""The request id that follows a reading: HTTP header, Kafka header, log field.

ingestion-api takes the client's ``X-Request-ID`` (or makes one), answers with
it, and sends it with every reading of that request as the Kafka header
``request_id``; each worker logs it beside the record it processed, so one
grep finds a reading's path through the API, Kafka and both workers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_HEADER = "x-request-id"
KAFKA_HEADER = "request_id"

# A client's id is kept only if it is short and plain: it ends up in log lines.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


def kafka_headers() -> list[tuple[str, bytes]]:
    """The headers that carry the current request id into Kafka (none outside a request)."""
    request_id = current_request_id.get()
    return [(KAFKA_HEADER, request_id.encode())] if request_id else []


def from_kafka_headers(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key == KAFKA_HEADER:
            return value.decode("utf-8", "replace")
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HTTP_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _ACCEPTABLE.match(given) else uuid.uuid4().hex
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((HTTP_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
