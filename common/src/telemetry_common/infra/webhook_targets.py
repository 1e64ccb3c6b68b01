"""Where a webhook may send: no SSRF through webhook URLs.

A webhook URL is chosen by whoever holds a write key, and the notifier POSTs to
it from inside the cluster: without a guard, a URL could reach the cloud
metadata service, a Kubernetes service or a database next to us. So a URL must
be http(s), and every address its host resolves to must be public, unless an
operator allows private networks or names CIDRs and hosts that may be reached.

The dashboard checks a URL when it is registered; the notifier checks again at
each delivery on the address it is about to connect to, and connects to that
very address (no second DNS lookup an attacker's resolver could answer
differently: DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba): credentials
# live there, so allowing private networks does not open them; only a CIDR naming them does.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# Names that only mean something inside a host or a cluster (RFC 6761 localhost,
# Kubernetes service DNS, GCP's metadata.google.internal).
INTERNAL_NAMES = ("localhost",)
INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".svc", ".cluster.local")
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: embeds an IPv4 address
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d form
RESOLVE_TIMEOUT_S = 5.0


class TargetRefused(ValueError):
    """The URL may not be used as a webhook target; the message says why."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)


def parse_allowed_targets(spec: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """``"10.20.0.0/16, hooks.internal"`` -> the CIDRs and the host names it allows."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not all(part.isalnum() or part == "-" for part in entry.replace(".", "")):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
            hosts.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return non_public_kind(inner)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address in SHARED_ADDRESS_SPACE:
        return "shared (carrier-grade NAT)"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def address_refusal(address: IPAddress, policy: TargetPolicy) -> str | None:
    """Why ``address`` may not be reached under ``policy``, or None if it may."""
    candidates = [address]
    inner = embedded_ipv4(address)
    if inner is not None:
        candidates.append(inner)
    if any(a in network for a in candidates for network in policy.networks):
        return None
    if any(a in METADATA_ADDRESSES for a in candidates):
        return f"{address}, a cloud metadata address"
    kind = non_public_kind(address)
    if kind is None or policy.allow_private:
        return None
    return f"{address}, a {kind} address"


def host_refusal(host: str, policy: TargetPolicy) -> str | None:
    if policy.allow_private or host in policy.hosts:
        return None
    if host in INTERNAL_NAMES or host.endswith(INTERNAL_SUFFIXES):
        return f"{host} is a local or cluster-internal host name"
    return None


def split_target(url: str) -> SplitResult:
    """The URL's parts, or TargetRefused when it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise TargetRefused("is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("must be an http or https URL")
    if not parts.hostname:
        raise TargetRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("must not carry credentials (deliveries are signed instead)")
    return parts


Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # Drop an IPv6 zone ("fe80::1%eth0"): the address alone says what it is.
    addresses = (str(info[4][0]).split("%")[0] for info in infos)
    return list(dict.fromkeys(ipaddress.ip_address(address) for address in addresses))


@dataclass(frozen=True)
class CheckedTarget:
    parts: SplitResult
    host: str
    port: int
    addresses: list[IPAddress]


async def check_target(
    url: str, policy: TargetPolicy, resolver: Resolver = resolve
) -> CheckedTarget:
    """Resolve the URL's host and check every address it has; TargetRefused says why not."""
    parts = split_target(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        refusal = host_refusal(host, policy)
        if refusal:
            raise TargetRefused(refusal)
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                addresses = await resolver(host, port)
        except (OSError, TimeoutError, UnicodeError):
            raise TargetRefused(f"{host} does not resolve") from None
        if not addresses:
            raise TargetRefused(f"{host} does not resolve")
        if host in policy.hosts:
            return CheckedTarget(parts, host, port, addresses)
    # Every address, not the first: a name with one public and one private
    # address would otherwise reach the private one on a later connection.
    for address in addresses:
        refusal = address_refusal(address, policy)
        if refusal:
            reason = f"targets {refusal}" if literal else f"{host} resolves to {refusal}"
            raise TargetRefused(reason)
    return CheckedTarget(parts, host, port, addresses)
