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
closes that gap (DNS rebinding): the webhook's HTTP client resolves through it, so the addresses
it connects to pass the same check. Redirects are not followed by the webhook client, so a
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

from yarl import URL

from ..errors import OcstreamError

__all__ = [
    "Address",
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


#: Where a connection may go: (address as ``create_connection`` takes it, port, family).
Address = tuple[str, int, int]


async def _lookup(host: str, port: int) -> list[tuple[_IPAddress, Address]]:
    """Every IPv4 and IPv6 address of ``host``, parsed and as a connection takes it; raises
    :class:`TargetUnresolved` when there is none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetUnresolved(f"{host} does not resolve: {exc}") from exc
    found: list[tuple[_IPAddress, Address]] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            text = str(sockaddr[0])
            address = _literal_address(text)
            if address is not None:
                scope = sockaddr[3] if family == socket.AF_INET6 else 0  # type: ignore[misc]
                if scope:  # a link-local IPv6 address names its interface
                    text = f"{text}%{scope}"
                found.append((address, (text, int(sockaddr[1]), int(family))))
    if not found:
        raise TargetUnresolved(f"{host} has no IPv4 or IPv6 address")
    return found


async def _resolve(host: str, port: int) -> list[_IPAddress]:
    return [address for address, _ in await _lookup(host, port)]


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


class GuardedResolver:
    """Resolves names for the webhook client's connections (``ocstream/sinks/http1.py``) and
    refuses non-public answers, with the rules of :func:`check_target` (DNS rebinding).

    Raises :class:`TargetRefused`, or :class:`TargetUnresolved` for a name that does not
    resolve. With ``allow_private`` it only resolves.
    """

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int) -> list[Address]:
        found = await _lookup(host, port)
        if not self.allow_private:
            for address, _ in found:
                reason = address_refusal(address)
                if reason is not None:
                    raise TargetRefused(f"target refused: {host} ({address}) is {reason}")
        return [connect_to for _, connect_to in found]
