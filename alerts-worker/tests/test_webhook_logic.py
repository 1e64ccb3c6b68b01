"""Webhook delivery without servers: signatures, retry schedule, circuit breaker, matching,
and where an attempt connects."""

from __future__ import annotations

import ipaddress
import socket
from datetime import UTC, datetime, timedelta

import pytest
from alerts_worker.webhooks.backoff import retry_delay
from alerts_worker.webhooks.circuit import Breakers, Circuit, CircuitState
from alerts_worker.webhooks.delivery import NETWORK_ERROR, REFUSED, attempt, new_client, pinned
from alerts_worker.webhooks.records import Notification, matches
from hypothesis import given
from hypothesis import strategies as st
from telemetry_common.domain.webhook_signature import (
    ID_HEADER,
    IDEMPOTENCY_HEADER,
    LEGACY_SIGNATURE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    delivery_headers,
    legacy_signature,
    new_secret,
    sign,
    verify,
)
from telemetry_common.infra.webhook_targets import TargetPolicy, check_target

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"alert_id":"e1:temperature_high","transition":"fired"}'


def received(headers: dict[str, str]) -> dict[str, str]:
    """Headers as a receiver's framework hands them over: names in lower case."""
    return {name.lower(): value for name, value in headers.items()}


def test_the_signature_is_the_standard_webhooks_one() -> None:
    # The Standard Webhooks specification's own example: this secret, id, timestamp and
    # body sign to this value (standardwebhooks.com, "Verifying signatures").
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_headers_carry_the_id_timestamp_and_a_verifiable_signature() -> None:
    headers = delivery_headers(SECRET, BODY, "e1:temperature_high:fired", "wh_1", 2, 1736935200)
    assert headers[IDEMPOTENCY_HEADER] == headers[ID_HEADER] == "e1:temperature_high:fired"
    assert headers[TIMESTAMP_HEADER] == "1736935200"
    assert headers[SIGNATURE_HEADER].startswith("v1,")
    assert verify(SECRET, received(headers), BODY, now=1736935260)
    # The earlier versions' signature rides along, for receivers written against it.
    assert headers[LEGACY_SIGNATURE_HEADER] == legacy_signature(SECRET, 1736935200, BODY)


def test_the_legacy_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    # Independently computed: printf '1736935200.{"a":1}' | openssl dgst -sha256 -hmac key
    assert legacy_signature("key", 1736935200, b'{"a":1}') == (
        "t=1736935200,v1=9dbe35646f3d3f053bd449d5c3de0078fc88f1c46bd71cedcc528c6ec89ab0ad"
    )


@pytest.mark.parametrize(
    ("secret", "body", "now", "why"),
    [
        (new_secret(), BODY, 1736935200, "wrong secret"),
        (SECRET, BODY + b" ", 1736935200, "body changed"),
        (SECRET, BODY, 1736935200 + 301, "too old: a replayed capture"),
        (SECRET, BODY, 1736935200 - 301, "from the future"),
    ],
)
def test_verification_refuses(secret: str, body: bytes, now: int, why: str) -> None:
    headers = received(delivery_headers(SECRET, BODY, "n", "wh_1", 1, 1736935200))
    assert not verify(secret, headers, body, now=now), why


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "n", "webhook-timestamp": "x", "webhook-signature": "v1,abc"},
        {"webhook-id": "n", "webhook-timestamp": "1736935200"},
        {"webhook-timestamp": "1736935200", "webhook-signature": "v1,abc"},
    ],
)
def test_malformed_signature_headers_do_not_verify(headers: dict[str, str]) -> None:
    assert not verify(SECRET, headers, BODY, now=1736935200)


def test_a_second_signature_lets_a_receiver_accept_during_secret_rotation() -> None:
    old = sign(new_secret(), "n", 1736935200, BODY)
    new = sign(SECRET, "n", 1736935200, BODY)
    headers = {"webhook-id": "n", "webhook-timestamp": "1736935200"}
    assert verify(SECRET, {**headers, "webhook-signature": f"{old} {new}"}, BODY, now=1736935200)


def test_a_secret_from_before_standard_webhooks_still_gets_the_legacy_signature() -> None:
    headers = delivery_headers("a-long-random-shared-secret", BODY, "n", "wh_1", 1, 1736935200)
    assert SIGNATURE_HEADER not in headers
    assert headers[LEGACY_SIGNATURE_HEADER].startswith("t=1736935200,v1=")


def test_backoff_doubles_from_initial_to_the_cap_with_equal_jitter() -> None:
    lowest = [retry_delay(n, 10, 300, rand=lambda: 0.0) for n in range(1, 8)]
    highest = [retry_delay(n, 10, 300, rand=lambda: 1.0) for n in range(1, 8)]
    assert highest == [10, 20, 40, 80, 160, 300, 300]
    assert lowest == [h / 2 for h in highest]


@given(st.integers(1, 1000), st.floats(0, 1))
def test_backoff_stays_within_half_and_all_of_its_ceiling(attempt: int, r: float) -> None:
    ceiling = min(3600, 0.5 * 2 ** min(attempt - 1, 60))
    assert ceiling / 2 <= retry_delay(attempt, 0.5, 3600, rand=lambda: r) <= ceiling


def test_circuit_opens_after_n_consecutive_failures_only() -> None:
    circuit = Circuit(failures_to_open=3, cooloff_s=60)
    for now in (0, 1):
        assert circuit.acquire(now)
        circuit.record(False, now)
    assert circuit.acquire(2)
    circuit.record(True, 2)  # a success resets the count
    for now in (3, 4, 5):
        assert circuit.acquire(now)
        circuit.record(False, now)
    assert circuit.state is CircuitState.OPEN
    assert circuit.blocks(5 + 59.9) and not circuit.acquire(5 + 59.9)


def test_half_open_lets_exactly_one_probe_and_its_result_decides() -> None:
    circuit = Circuit(failures_to_open=1, cooloff_s=10)
    circuit.acquire(0)
    circuit.record(False, 0)
    assert circuit.acquire(10)  # cool-off over: the probe
    assert circuit.state is CircuitState.HALF_OPEN
    assert not circuit.acquire(10.5) and circuit.blocks(10.5)  # one probe at a time
    circuit.record(False, 11)  # probe failed: open for another cool-off
    assert circuit.state is CircuitState.OPEN and not circuit.acquire(20.9)
    assert circuit.acquire(21)
    circuit.record(True, 21)
    assert circuit.state is CircuitState.CLOSED
    assert circuit.acquire(21) and circuit.acquire(21)  # closed: no limit


def test_breakers_are_per_url_and_report_each_change() -> None:
    changes: list[tuple[str, CircuitState]] = []
    breakers = Breakers(1, 5, lambda url, state: changes.append((url, state)))
    breakers.acquire("https://a/x", 0)
    breakers.record("https://a/x", False, 0)
    assert breakers.acquire("https://b/x", 1)
    assert breakers.blocked(1) == ["https://a/x"]
    assert breakers.blocked(5) == []
    breakers.acquire("https://a/x", 5)
    breakers.record("https://a/x", True, 5)
    assert changes == [
        ("https://a/x", CircuitState.CLOSED),
        ("https://a/x", CircuitState.OPEN),
        ("https://b/x", CircuitState.CLOSED),
        ("https://a/x", CircuitState.HALF_OPEN),
        ("https://a/x", CircuitState.CLOSED),
    ]


T0 = datetime(2025, 1, 15, 10, tzinfo=UTC)


def notification(published_at: datetime = T0, **overrides: object) -> Notification:
    announced: dict = {
        "notification_id": "a1:fired",
        "alert_id": "a1",
        "project_id": "default",
        "device_id": "dev-1",
        "severity": "critical",
        "transition": "fired",
        "rule_id": "rule-1",
    }
    return Notification({**announced, **overrides}, b"{}", published_at)


@pytest.mark.parametrize(
    ("filters", "wanted"),
    [
        ({}, True),
        ({"severity": ["critical"]}, True),
        ({"severity": ["warning"]}, False),
        ({"device_ids": ["dev-1", "dev-2"]}, True),
        ({"device_ids": ["dev-2"]}, False),
        ({"rule_ids": ["rule-1"]}, True),
        ({"rule_ids": ["rule-9"]}, False),
        ({"severity": ["critical"], "device_ids": ["dev-2"]}, False),
        ({"severity": None, "device_ids": None, "rule_ids": None}, True),
    ],
)
def test_webhook_filters_all_have_to_agree(filters: dict, wanted: bool) -> None:
    webhook = {"_id": "wh_1", "created_at": T0 - timedelta(minutes=1), **filters}
    assert matches(webhook, notification()) is wanted


def test_a_webhook_gets_only_its_own_projects_transitions() -> None:
    webhook = {"_id": "wh_1", "created_at": T0 - timedelta(minutes=1), "project_id": "prj-a"}
    assert matches(webhook, notification(project_id="prj-a"))
    assert not matches(webhook, notification())
    # A webhook registered before projects is the default project's.
    assert matches({"_id": "wh_2", "created_at": T0 - timedelta(minutes=1)}, notification())


def test_a_webhook_gets_no_transition_published_before_it_existed() -> None:
    webhook = {"_id": "wh_1", "created_at": T0 + timedelta(seconds=1)}
    assert not matches(webhook, notification())
    assert matches(webhook, notification(published_at=T0 + timedelta(seconds=1)))


async def test_an_attempt_connects_to_the_checked_address_with_the_original_host() -> None:
    target = await check_target(
        "https://hooks.example.com:8443/in?x=1", TargetPolicy(), public_resolver("2606:4700::1")
    )
    url, host, server_name = pinned(target)
    assert url == "https://[2606:4700::1]:8443/in?x=1"
    assert host == {"Host": "hooks.example.com:8443"}
    assert server_name == "hooks.example.com"  # the certificate is checked by name


async def test_a_refused_or_unreachable_target_is_a_recorded_failure_not_a_crash() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with new_client(timeout_s=5, concurrency=1) as client:
        refused = await attempt(client, f"http://127.0.0.1:{port}/", b"{}", {}, TargetPolicy(), 5)
        unreachable = await attempt(
            client, f"http://127.0.0.1:{port}/", b"{}", {}, TargetPolicy(allow_private=True), 5
        )
    assert (refused.outcome, refused.status_code) == (REFUSED, None)
    assert refused.error == "url: targets 127.0.0.1, a loopback address"
    assert unreachable.outcome == NETWORK_ERROR and not unreachable.ok


def public_resolver(address: str):
    async def resolve(host: str, port: int) -> list:
        return [ipaddress.ip_address(address)]

    return resolve
