"""The SSRF guard of webhook delivery: which targets are refused, before and during connect."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import pytest

from ocstream.sinks.ssrf import (
    GuardedResolver,
    TargetRefused,
    TargetUnresolved,
    address_refusal,
    check_target,
)

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "fec0::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is a loopback address"),
        ("http://10.0.0.5/hook", "10.0.0.5 is a private address"),
        ("http://[::ffff:7f00:1]/", "loopback address (embedded in ::ffff:7f00:1)"),
        ("http://localhost:1/x", "localhost (127.0.0.1) is a loopback address"),
        ("http://2130706433/", "(127.0.0.1) is a loopback address"),  # decimal IPv4
        ("ftp://example.org/", "scheme 'ftp' is not http or https"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://user:pw@example.org/", "user info in the URL"),
    ],
)
async def test_check_target_refuses(url: str, message: str) -> None:
    with pytest.raises(TargetRefused, match="^target refused: ") as info:
        await check_target(url, allow_private=False)
    assert message in str(info.value)


async def test_allow_private_skips_the_address_checks_but_not_the_scheme() -> None:
    await check_target("http://127.0.0.1:8080/x", allow_private=True)
    await check_target("http://10.0.0.5/x", allow_private=True)
    with pytest.raises(TargetRefused):
        await check_target("gopher://127.0.0.1/", allow_private=True)


async def test_unresolvable_hosts_are_transient() -> None:
    with pytest.raises(TargetUnresolved):
        await check_target("http://no-such-host.invalid/x", allow_private=False)


async def test_a_name_that_resolves_too_slowly_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only resolving waits, and for at most ``timeout``; an address needs no timer."""
    from ocstream.sinks import ssrf

    async def slow(host: str, port: int) -> list[ipaddress.IPv4Address]:
        await asyncio.sleep(30)
        return [ipaddress.IPv4Address("93.184.216.34")]

    monkeypatch.setattr(ssrf, "_resolve", slow)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await check_target("https://hooks.example.com/x", False, timeout=0.2)
    assert time.monotonic() - started < 5
    await check_target("https://93.184.216.34/x", False, timeout=0.2)  # a literal: no lookup


async def test_the_connection_resolver_refuses_private_answers() -> None:
    # check_target and the connection resolve separately; the resolver closes the gap (the
    # HTTP client's use of it: tests/sinks/test_http1.py).
    with pytest.raises(TargetRefused, match=r"localhost \(.*\) is a loopback address"):
        await GuardedResolver(allow_private=False).resolve("localhost", 9)
    addresses = await GuardedResolver(allow_private=True).resolve("localhost", 9)
    assert ("127.0.0.1", 9, socket.AF_INET) in addresses or ("::1", 9, socket.AF_INET6) in addresses
    with pytest.raises(TargetUnresolved):
        await GuardedResolver(allow_private=True).resolve("no-such-host.invalid", 9)
