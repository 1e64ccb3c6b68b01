"""One delivery attempt: check where the URL leads, then POST to exactly that address.

The URL's host is resolved and every address checked (telemetry_common.infra.webhook_targets)
right before the attempt, and the request goes to the checked address with the
original Host header and TLS server name: a DNS answer that changed since the
webhook was registered (DNS rebinding) cannot steer it into the cluster.
Redirects are not followed and proxies from the environment are not used, for
the same reason. The whole attempt, resolution included, is bounded by one timeout;
the response body is never read, so a receiver cannot make us buffer a large one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass

import aiohttp
from telemetry_common.infra.webhook_targets import (
    CheckedTarget,
    TargetPolicy,
    TargetRefused,
    check_target,
)

SUCCESS = "success"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
NETWORK_ERROR = "network_error"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: str
    status_code: int | None
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCESS


def new_client(timeout_s: float, concurrency: int) -> aiohttp.ClientSession:
    """Call from the running loop; close it when done."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=concurrency),
        trust_env=False,
    )


def pinned(target: CheckedTarget) -> tuple[str, dict[str, str], str | None]:
    """The URL naming the checked address, the Host header, and the TLS server name."""
    address = target.addresses[0]
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    url = target.parts._replace(netloc=f"{literal}:{target.port}").geturl()
    host = target.parts.netloc
    server_name = target.host if target.parts.scheme == "https" else None
    return url, {"Host": host}, server_name


async def attempt(
    client: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    policy: TargetPolicy,
    timeout_s: float,
) -> AttemptResult:
    started = time.perf_counter()

    def result(
        outcome: str, status_code: int | None = None, error: str | None = None
    ) -> AttemptResult:
        return AttemptResult(outcome, status_code, error, time.perf_counter() - started)

    try:
        async with asyncio.timeout(timeout_s):
            target = await check_target(url, policy)
            request_url, host, server_name = pinned(target)
            async with client.post(
                request_url,
                data=body,
                headers={**headers, **host},
                allow_redirects=False,
                server_hostname=server_name,
            ) as response:
                status = response.status
    except TargetRefused as exc:
        return result(REFUSED, error=f"url: {exc}")
    except TimeoutError:
        return result(TIMEOUT, error=f"no answer within {timeout_s:g}s")
    except Exception as exc:
        # Transport errors, TLS failures, a URL the client refuses: each is this
        # attempt's failure, recorded and retried, never an unrecorded crash.
        return result(NETWORK_ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
    if 200 <= status < 300:
        return result(SUCCESS, status)
    return result(HTTP_ERROR, status, f"HTTP {status}")
