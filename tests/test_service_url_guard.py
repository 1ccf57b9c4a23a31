"""The SSRF guard's address classes and the ``GAPFIX_URL_ALLOW`` allow-list, by classifying
addresses: nothing here connects anywhere."""

from __future__ import annotations

import ipaddress

import pytest

from service.settings import Settings
from service.url_guard import AllowList, refusal


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-global"),  # shared address space (carrier NAT)
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(ip: str, why: str) -> None:
    assert refusal(ip) == why


@pytest.mark.parametrize("ip", ["8.8.8.8", "93.184.215.14", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(ip: str) -> None:
    assert refusal(ipaddress.ip_address(ip)) is None


def test_allow_list_entries() -> None:
    a = AllowList.parse(" images.internal , cdn.local:8443, *.corp.example, 10.0.0.0/8, "
                        "127.0.0.1:9000, [::1]:8080, fd00::1 ,")  # fmt: skip
    ip = ipaddress.ip_address
    assert a.allows_host("IMAGES.internal.", 80) and a.allows_host("images.internal", 1234)
    assert a.allows_host("cdn.local", 8443) and not a.allows_host("cdn.local", 443)
    assert a.allows_host("a.b.corp.example", 443) and not a.allows_host("corp.example", 443)
    assert not a.allows_host("xcorp.example", 443) and not a.allows_host("evil.com", 80)
    assert a.allows_address(ip("10.200.3.4"), 1) and not a.allows_address(ip("11.0.0.1"), 1)
    assert a.allows_address(ip("127.0.0.1"), 9000) and not a.allows_address(ip("127.0.0.1"), 80)
    assert a.allows_address(ip("::1"), 8080) and not a.allows_address(ip("::1"), 80)
    assert a.allows_address(ip("fd00::1"), 5) and not a.allows_address(ip("fd00::2"), 5)
    assert not AllowList.parse("")
    for bad in ("10.0.0.0/33", "host:0", "host:http", "a b", "[::1", "http://x"):
        with pytest.raises(ValueError, match="GAPFIX_URL_ALLOW"):
            AllowList.parse(bad)
    with pytest.raises(ValueError, match="GAPFIX_URL_ALLOW"):
        Settings(_env_file=None, url_allow="10.0.0.0/40")  # type: ignore[call-arg]
