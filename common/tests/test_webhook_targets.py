"""The SSRF guard: which webhook URLs and addresses are refused, and what allows them."""

from __future__ import annotations

import ipaddress

import pytest
from telemetry_common.infra.settings import DashboardSettings
from telemetry_common.infra.webhook_targets import (
    TargetPolicy,
    TargetRefused,
    address_refusal,
    check_target,
    parse_allowed_targets,
)

STRICT = TargetPolicy()
PRIVATE_ALLOWED = TargetPolicy(allow_private=True)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("169.254.10.10", "link-local"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.1.1", "shared (carrier-grade NAT)"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        # IPv6 forms that carry an IPv4 address: judged by the address inside.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::127.0.0.1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_non_public_addresses_are_refused_naming_their_kind(address: str, kind: str) -> None:
    refusal = address_refusal(ipaddress.ip_address(address), STRICT)
    assert refusal is not None and f"a {kind} address" in refusal
    assert address_refusal(ipaddress.ip_address(address), PRIVATE_ALLOWED) is None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), STRICT) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"])
def test_cloud_metadata_needs_an_explicit_cidr_even_with_private_networks_allowed(
    address: str,
) -> None:
    ip = ipaddress.ip_address(address)
    assert "metadata" in (address_refusal(ip, PRIVATE_ALLOWED) or "")
    networks, _ = parse_allowed_targets("169.254.169.254/32, fd00:ec2::254/128")
    assert address_refusal(ip, TargetPolicy(networks=networks)) is None


def test_an_allowed_cidr_opens_only_itself() -> None:
    networks, hosts = parse_allowed_targets(" 10.20.0.0/16 ,hooks.internal,")
    policy = TargetPolicy(networks=networks, hosts=hosts)
    assert hosts == frozenset({"hooks.internal"})
    assert address_refusal(ipaddress.ip_address("10.20.3.4"), policy) is None
    assert address_refusal(ipaddress.ip_address("::ffff:10.20.3.4"), policy) is None
    assert address_refusal(ipaddress.ip_address("10.21.0.1"), policy) is not None


def test_a_bad_allow_list_entry_stops_the_service_naming_it() -> None:
    with pytest.raises(ValueError, match="neither a CIDR nor a host name"):
        DashboardSettings(webhook_allowed_targets="10.0.0.0/8,http://x")


def fixed(addresses: list[str]):
    async def resolver(host: str, port: int) -> list:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolver


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "must be an http or https URL"),
        ("file:///etc/passwd", "must be an http or https URL"),
        ("http:///nohost", "must name a host"),
        ("https://user:pw@example.com/", "must not carry credentials"),
        ("http://example.com:99999/", "is not a valid URL"),
        ("http://127.0.0.1:8080/hook", "targets 127.0.0.1, a loopback address"),
        ("http://[::1]/hook", "targets ::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/hook", "a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://localhost:8000/", "localhost is a local or cluster-internal host name"),
        ("http://api.default.svc/", "cluster-internal"),
        ("http://db.prod.svc.cluster.local/", "cluster-internal"),
        ("http://metadata.google.internal/", "cluster-internal"),
    ],
)
async def test_urls_refused_before_any_connection(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason.replace("[", r"\[").replace(".", r"\.")):
        await check_target(url, STRICT, fixed(["93.184.215.14"]))


async def test_a_name_is_refused_if_any_of_its_addresses_is_private() -> None:
    # One public and one private answer: a later connection could take either.
    resolver = fixed(["93.184.215.14", "10.0.0.5"])
    with pytest.raises(TargetRefused, match=r"hooks\.example\.com resolves to 10\.0\.0\.5"):
        await check_target("https://hooks.example.com/x", STRICT, resolver)


async def test_a_decimal_host_is_judged_by_what_it_resolves_to() -> None:
    # "2130706433" is 127.0.0.1 to the system resolver: the resolved address decides.
    with pytest.raises(TargetRefused, match="loopback"):
        await check_target("http://2130706433/", STRICT)


async def test_public_names_pass_with_every_address_and_the_port() -> None:
    resolver = fixed(["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    target = await check_target("https://hooks.example.com/x?y=1", STRICT, resolver)
    assert target.host == "hooks.example.com" and target.port == 443
    assert len(target.addresses) == 2


async def test_allowed_host_names_may_resolve_to_private_addresses() -> None:
    _, hosts = parse_allowed_targets("hooks.internal")
    target = await check_target(
        "http://hooks.internal:8080/", TargetPolicy(hosts=hosts), fixed(["10.0.0.7"])
    )
    assert target.addresses == [ipaddress.ip_address("10.0.0.7")]


async def test_an_unresolvable_host_is_refused() -> None:
    async def nxdomain(host: str, port: int) -> list:
        raise OSError("Name or service not known")

    with pytest.raises(TargetRefused, match="does not resolve"):
        await check_target("https://no-such-host.example/", STRICT, nxdomain)
