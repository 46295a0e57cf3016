"""Which S3 endpoints a node may connect to on behalf of a peer.

A peer's endpoint comes from its chain commitment, so any host and port can be named there. On a
real network a node must not be made to open connections to itself (loopback services), to its
private network, or to the cloud metadata service (169.254.169.254, fd00:ec2::254), so a peer
endpoint is refused when *any* address its host resolves to is not a public unicast address.
The local subnet (devchain) runs every node on one machine and allows loopback explicitly.

Only peer stores are checked: a node's own bucket is its operator's configuration and trusted.

The check runs when the peer's client is created and again before every request, and
``storage.bounded_http`` then connects to the address that was checked (the host name is kept
for TLS and the Host header), so a DNS answer that changes between the check and the connection
(DNS rebinding) is not followed. What remains: a host whose DNS answer changes between two
requests is checked again for each. ``getaddrinfo`` cannot be interrupted, so a lookup runs in
a helper thread that the check stops waiting for after ``RESOLVE_TIMEOUT`` (or the operation's
deadline); a hostile name server then costs that much, and the abandoned lookup ends when the
system resolver gives up.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from storage.errors import EndpointRefused, StorageUnavailable

Resolver = Callable[..., Sequence[tuple[Any, ...]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT = 5.0  # seconds a check waits for DNS
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

# Never allowed, whatever the policy: link-local (both families) holds the cloud metadata
# services; AWS's IPv6 metadata address and Alibaba's sit inside ranges a policy may allow.
_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(net)
    for net in ("0.0.0.0/8", "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32")
)
# What ``allow_private`` allows: RFC 1918, carrier-grade NAT (RFC 6598) and IPv6 unique-local.
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
# IPv6 prefixes that carry an IPv4 address the packet ends up at: the IPv4 address decides.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"),)
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True)
class EndpointPolicy:
    """Which non-public addresses a peer endpoint may resolve to (default: none).

    ``allow_loopback`` adds 127.0.0.0/8 and ::1 (the local subnet, every node on one machine);
    ``allow_private`` adds RFC 1918, 100.64/10 and fc00::/7 (a private test network). Link-local
    and metadata addresses are refused under every policy.
    """

    allow_loopback: bool = False
    allow_private: bool = False


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint URL: scheme, host (lower-case, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        """The Host header botocore signs for this URL: no default port, IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    """Parse an endpoint URL, or raise ``EndpointRefused`` naming what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise EndpointRefused(f"endpoint must be a non-empty URL string, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of 0..65535 or not a number
        host = parts.hostname
    except ValueError as exc:  # also a malformed IPv6 literal ("http://[::1")
        raise EndpointRefused(f"endpoint {url!r} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise EndpointRefused(f"endpoint {url!r}: scheme must be http or https")
    if "@" in parts.netloc:
        raise EndpointRefused(f"endpoint {url!r}: user information in the URL is not allowed")
    if parts.query or parts.fragment:
        raise EndpointRefused(f"endpoint {url!r}: a query or fragment is not allowed")
    if not host:
        raise EndpointRefused(f"endpoint {url!r} names no host")
    if port is not None and not 1 <= port <= 65535:
        raise EndpointRefused(f"endpoint {url!r}: port {port} outside 1..65535")
    _check_host_syntax(url, host)
    return Endpoint(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


def _check_host_syntax(url: str, host: str) -> None:
    if _literal(host) is not None:
        return
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise EndpointRefused(f"endpoint {url!r}: {host!r} is neither an IP address nor a DNS name")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_endpoint(
    endpoint: Endpoint, resolve: Resolver = socket.getaddrinfo, timeout: float = RESOLVE_TIMEOUT
) -> tuple[str, ...]:
    """Every address the host resolves to (deduplicated, resolver order), within ``timeout``."""
    outcome: dict[str, Any] = {}

    def lookup() -> None:
        try:
            outcome["answers"] = resolve(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
        except (UnicodeError, ValueError, OSError) as exc:  # gaierror is an OSError
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, name=f"resolve {endpoint.host[:40]}", daemon=True)
    worker.start()
    worker.join(max(0.0, timeout))
    if worker.is_alive():
        raise StorageUnavailable(f"{endpoint.host!r} did not resolve within {timeout:.1f} s")
    error = outcome.get("error")
    if isinstance(error, socket.gaierror):  # NXDOMAIN or a resolver failure: maybe temporary
        raise StorageUnavailable(f"cannot resolve {endpoint.host!r}: {error}") from error
    if error is not None:  # e.g. a label the IDNA codec refuses
        raise EndpointRefused(f"cannot resolve {endpoint.host!r}: {type(error).__name__}: {error}") from error
    try:
        addresses = tuple(dict.fromkeys(str(answer[4][0]) for answer in outcome["answers"]))
    except (KeyError, IndexError, TypeError) as exc:  # a resolver that answers nonsense
        raise EndpointRefused(f"resolving {endpoint.host!r} gave no usable answer") from exc
    if not addresses:
        raise StorageUnavailable(f"{endpoint.host!r} resolves to no address")
    return addresses


def address_refusal(address: str, policy: EndpointPolicy) -> str | None:
    """Why ``address`` is refused under ``policy`` (a short phrase), or None when allowed."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _carried_v4(ip)
        if inner is not None:
            return address_refusal(str(inner), policy)
        if ip.sixtofour is not None:  # 2002::/16 delivers to the embedded IPv4 address
            reason = address_refusal(str(ip.sixtofour), policy)
            if reason is not None:
                return f"6to4 of a {reason} address"
    return _classify(ip, policy)


def _carried_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64) or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# Special-purpose ranges Python's ``is_global`` still calls global (IANA special-purpose
# registries): deprecated IPv6 site-local (still routed inside some networks), the IETF protocol
# assignments block, the 6to4 relay anycast, and the documentation prefixes of both families.
_SPECIAL_PURPOSE = tuple(
    ipaddress.ip_network(net)
    for net in ("fec0::/10", "192.0.0.0/24", "192.88.99.0/24", "3fff::/20", "2001:db8::/32",
                "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
)


def _classify(ip: IPAddress, policy: EndpointPolicy) -> str | None:
    if any(ip in net for net in _ALWAYS_REFUSED):
        return "link-local or metadata"
    if any(ip in net for net in _SPECIAL_PURPOSE):
        return "special-purpose"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return None if policy.allow_loopback else "loopback"
    if any(ip in net for net in _PRIVATE):
        return None if policy.allow_private else "private"
    if ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "reserved or non-global"
    return None


def check_endpoint(
    url: str, policy: EndpointPolicy, resolve: Resolver = socket.getaddrinfo, timeout: float = RESOLVE_TIMEOUT
) -> tuple[Endpoint, tuple[str, ...]]:
    """Parse ``url``, resolve its host and refuse it if any address is not allowed.

    Returns the endpoint and its addresses (all allowed). Raises ``EndpointRefused`` for a
    malformed URL or a forbidden address, ``StorageUnavailable`` when the host does not resolve.
    Any forbidden address refuses the whole endpoint: a client may connect to any of them.
    """
    endpoint = parse_endpoint(url)
    addresses = resolve_endpoint(endpoint, resolve, timeout)
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            raise EndpointRefused(f"endpoint {url!r}: {endpoint.host!r} resolves to {address} ({reason})")
    return endpoint, addresses
