"""A server that answers every HTTP request with 202 at once: the load generator's ceiling.

Whatever requests/s the bench's client reaches against it is the most the client can
make on this machine; `python -m telemetry_bench.answer_at_once` serves on PORT.
"""

from __future__ import annotations

import asyncio
import os
from typing import cast

import uvloop

ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class AnswerAtOnce(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport (uvloop's does not subclass asyncio's ABCs).
        self._transport = cast(asyncio.WriteTransport, transport)
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = self._buffer[:end].lower()
            start = head.find(b"\r\ncontent-length:")
            length = int(head[start + 17 :].split(b"\r\n", 1)[0]) if start >= 0 else 0
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length :]
            self._transport.write(ANSWER)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(AnswerAtOnce, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    uvloop.run(serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8009"))))


if __name__ == "__main__":
    main()
