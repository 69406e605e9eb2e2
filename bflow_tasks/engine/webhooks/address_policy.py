"""SSRF guard: only http(s) URLs whose host resolves to public addresses may be called.

The host is resolved once per attempt and the connection goes to the address checked here
(see `transport`), so a DNS answer that changes between the check and the connection
(rebinding) cannot point a webhook at an internal service.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = {"http": 80, "https": 443}
# Cloud metadata services; most sit in ranges refused anyway, named here so that they
# stay refused whatever the ranges below become.
METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
}
# Ranges Python's `is_global` lets through but no webhook receiver lives in.
EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "100.64.0.0/10", "fec0::/10", "64:ff9b:1::/48")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(ValueError):
    """The URL may not be called: not http(s), no host, or a forbidden address."""


class Unresolvable(UnsafeUrl):
    """The URL's host does not resolve."""


@dataclass(frozen=True)
class Target:
    """Where to connect: the URL's host name (for Host, SNI, certificates) and a checked address."""

    scheme: str
    host: str
    port: int
    address: str


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL at registration: bad scheme, host or characters, or (unless allowed) a private address."""
    if allow_private:
        _split(url)
    else:
        resolve(url, allow_private=False)


def resolve(url: str, *, allow_private: bool) -> Target:
    """Resolve the URL's host once and return the address to connect to, refusing unsafe ones."""
    scheme, host, port = _split(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"host {host!r} does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise Unresolvable(f"host {host!r} has no address")
    if not allow_private:
        for address in addresses:
            reason = forbidden_reason(ipaddress.ip_address(address.split("%")[0]))
            if reason is not None:
                # One bad answer is enough: a name mixing public and internal addresses is a trap.
                raise UnsafeUrl(f"host {host!r} resolves to {address}, {reason}")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0])


def forbidden_reason(ip: IPAddress) -> str | None:
    """Say why a webhook may not go to this address, or None if it is a public one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = forbidden_reason(embedded)
            return None if reason is None else f"{reason} (embedded in an IPv6 address)"
    if ip in METADATA:
        return "a cloud metadata address"
    for name in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved", "site_local"):
        if getattr(ip, f"is_{name}", False):
            return f"a {name.replace('_', '-')} address"
    if any(ip in network for network in EXTRA_BLOCKED if network.version == ip.version):
        return "a shared (CGNAT) or special-purpose address"
    if not ip.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 address reaches, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _split(url: str) -> tuple[str, str, int]:
    _refuse_invisible(url)
    _refuse_ambiguous(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsafeUrl("only http and https URLs may receive webhooks")
    if "@" in parts.netloc:
        # `user:pw@host`: parsers disagree on where the user ends and the host begins, and
        # a receiver's credentials would be stored and shown as part of the URL.
        raise UnsafeUrl("the URL carries a user name or password (user@ or user:password@ before the host)")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    return scheme, parts.hostname, port or SCHEMES[scheme]


def _refuse_ambiguous(url: str) -> None:
    # urlsplit reads `http://a:1\@b/` as host b; requests and urllib3 (like browsers) end
    # the host at the backslash and connect to a. Percent-encode it (%5C) in a path or query.
    position = url.find("\\")
    if position >= 0:
        raise UnsafeUrl(f"the URL contains a backslash at position {position}")


def _refuse_invisible(url: str) -> None:
    # urlsplit silently drops tabs and newlines and strips leading spaces and control
    # characters, so a URL that parses fine may still not be the URL stored and sent.
    # Percent-encode them (%20, %0A) where they belong in a path or query.
    for position, char in enumerate(url):
        category = unicodedata.category(char)
        if category in ("Cc", "Cf"):
            what = "a control character"
        elif char.isspace() or category.startswith("Z"):
            what = "whitespace"
        else:
            continue
        raise UnsafeUrl(f"the URL contains {what} (U+{ord(char):04X}) at position {position}")
