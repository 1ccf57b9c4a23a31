"""The SSRF guard of image URLs: which resolved addresses may be fetched, and the operator's
allow-list (``GAPFIX_URL_ALLOW``) of non-public hosts and networks that may be fetched anyway.

An address is refused when it is not publicly routable: loopback, private (RFC 1918, ULA),
link-local (cloud metadata services live there), multicast, reserved, unspecified, or otherwise
not global (e.g. the 100.64.0.0/10 shared address space). IPv6 forms that embed an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are judged by the
embedded address.

``GAPFIX_URL_ALLOW`` is a comma-separated list of entries, each one of:

- ``name`` / ``name:port``: a host name as written in the URL (case-insensitive), any port or
  only ``port``; ``*.name`` matches every subdomain of ``name`` (not ``name`` itself). A named
  host is trusted whatever it resolves to.
- ``ip`` / ``ip:port`` / ``[ipv6]:port``: a resolved address, any port or only ``port``.
- ``cidr`` (``10.0.0.0/8``, ``fd00::/8``): every resolved address in the network, any port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOSTNAME = re.compile(
    r"^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$"
)
_CHECKS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress | str) -> str | None:
    """Why ``ip`` may not be fetched (``"loopback"``, ``"private"``, ...), or None if public."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    addr = _embedded_v4(addr) or addr  # a translation prefix is judged by what it carries
    for attr, name in _CHECKS:
        if getattr(addr, attr):
            return name
    return None if addr.is_global else "non-global"


def normalize_host(host: str) -> str:
    """A host name as the allow-list compares it: lower case, no trailing dot, no brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"GAPFIX_URL_ALLOW entry {entry!r}: port must be 1-65535")
    return int(text)


@dataclass(frozen=True)
class AllowList:
    """Hosts, addresses and networks exempt from the non-public-address refusal."""

    hosts: frozenset[tuple[str, int | None]] = frozenset()
    suffixes: tuple[tuple[str, int | None], ...] = ()
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> AllowList:
        """Parse ``GAPFIX_URL_ALLOW`` (see the module docstring); ValueError names a bad entry."""
        hosts: set[tuple[str, int | None]] = set()
        suffixes: list[tuple[str, int | None]] = []
        networks: list[tuple[IPNetwork, int | None]] = []
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append((ipaddress.ip_network(entry, strict=False), None))
                except ValueError:
                    raise ValueError(f"GAPFIX_URL_ALLOW entry {entry!r} is not a CIDR") from None
                continue
            host, port = entry, None
            if entry.startswith("["):  # [ipv6] or [ipv6]:port
                inside, sep, rest = entry[1:].partition("]")
                if not sep or (rest and not rest.startswith(":")):
                    raise ValueError(f"GAPFIX_URL_ALLOW entry {entry!r}: bad [IPv6]:port")
                host, port = inside, _port(rest[1:], entry) if rest else None
            elif entry.count(":") == 1:
                host, text = entry.split(":")
                port = _port(text, entry)
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                name = normalize_host(host)
                if not _HOSTNAME.match(name):
                    raise ValueError(
                        f"GAPFIX_URL_ALLOW entry {entry!r} is not a host, host:port, IP or CIDR"
                    ) from None
                if name.startswith("*."):
                    suffixes.append((name[1:], port))
                else:
                    hosts.add((name, port))
                continue
            networks.append((ipaddress.ip_network(ip), port))
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.suffixes or self.networks)

    def allows_host(self, host: str, port: int) -> bool:
        """True when the URL's host name (with its effective port) is listed."""
        name = normalize_host(host)
        if (name, None) in self.hosts or (name, port) in self.hosts:
            return True
        return any(name.endswith(s) and p in (None, port) for s, p in self.suffixes)

    def allows_address(self, ip: IPAddress, port: int) -> bool:
        """True when the resolved address (connected to on ``port``) is listed."""
        return any(ip in net and p in (None, port) for net, p in self.networks)
