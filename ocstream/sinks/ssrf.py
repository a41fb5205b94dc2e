"""The SSRF guard of webhook delivery: refuse targets inside the service's own network.

Webhook URLs come from API users. Without a guard, a subscription could make the worker POST to
``http://127.0.0.1:6379`` (our Redis), a cloud metadata endpoint (``169.254.169.254``) or any
host on the private network. :func:`check_target` is called before every attempt (DNS answers
change) and refuses:

* schemes other than ``http`` and ``https``, URLs without a host, and user info in the URL;
* addresses that are loopback, private (RFC 1918, ULA ``fc00::/7``), shared (``100.64.0.0/10``),
  link-local, multicast, reserved, unspecified or otherwise not globally routable — for IPv4 and
  IPv6, and for IPv4 addresses embedded in IPv6 ones (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
  ``64:ff9b::/96``, 6to4 ``2002::/16`` and Teredo);
* a host name if *any* of its addresses is refused (the connection could use any of them).

The check resolves the name once; the connection resolves it again. :class:`GuardedResolver`
closes that gap (DNS rebinding): the HTTP client's connector uses it, so the addresses it
connects to pass the same check. Redirects are not followed by the webhook client, so a
``Location`` cannot lead elsewhere either.

``allow_private=True`` turns the address checks off (tests, and deployments whose receivers live
on the private network); scheme checks stay.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from ..errors import OcstreamError

__all__ = [
    "GuardedResolver",
    "TargetRefused",
    "TargetUnresolved",
    "address_refusal",
    "check_target",
]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")
_SHARED: Final = ipaddress.IPv4Network("100.64.0.0/10")
_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})


class TargetRefused(OcstreamError):
    """The webhook URL points where the service must not send requests. Permanent."""


class TargetUnresolved(OcstreamError):
    """The host name did not resolve (now). Transient: the delivery is retried."""


def address_refusal(address: _IPAddress) -> str | None:
    """Why ``address`` may not be a webhook target, or None if it is a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and address.sixtofour is not None:
            embedded = address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason} (embedded in {address})" if reason else None
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address.is_site_local:
            return "a site-local address"
    for attribute, label in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attribute):
            return label
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _literal_address(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def parse_target(url: str) -> URL:
    """The URL, if its form is acceptable (scheme, host, no user info); raises TargetRefused."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise TargetRefused(f"target refused: invalid URL ({exc})") from exc
    scheme = (parsed.scheme or "").lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise TargetRefused(f"target refused: scheme {scheme or '(none)'!r} is not http or https")
    if not parsed.host:
        raise TargetRefused("target refused: the URL has no host")
    if parsed.user is not None or parsed.password is not None:
        raise TargetRefused("target refused: user info in the URL")
    return parsed


async def _resolve(host: str, port: int) -> list[_IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetUnresolved(f"{host} does not resolve: {exc}") from exc
    addresses: list[_IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = _literal_address(str(sockaddr[0]))
            if address is not None:
                addresses.append(address)
    if not addresses:
        raise TargetUnresolved(f"{host} has no IPv4 or IPv6 address")
    return addresses


async def check_target(url: str, allow_private: bool, timeout: float | None = None) -> None:
    """Raise :class:`TargetRefused` if ``url`` may not be POSTed to.

    Resolves the host name (unless ``allow_private`` or the host is an address literal) and
    refuses it if any address is not public. A name that does not resolve raises
    :class:`TargetUnresolved` (retry later); one that takes more than ``timeout`` seconds to
    resolve raises ``TimeoutError``.
    """
    parsed = parse_target(url)
    if allow_private:
        return
    host = parsed.host
    assert host is not None
    literal = _literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        async with asyncio.timeout(timeout):
            addresses = await _resolve(host, parsed.port or 0)
    for address in addresses:
        reason = address_refusal(address)
        if reason is not None:
            name = host if literal is not None else f"{host} ({address})"
            raise TargetRefused(f"target refused: {name} is {reason}")


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses non-public answers (DNS rebinding).

    Raises :class:`TargetRefused` from the request (aiohttp passes non-``OSError`` resolver
    exceptions through). With ``allow_private`` it is a plain threaded resolver.
    """

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for result in results:
                address = _literal_address(result["host"])
                reason = "not an IP address" if address is None else address_refusal(address)
                if reason is not None:
                    raise TargetRefused(f"target refused: {host} ({result['host']}) is {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()
