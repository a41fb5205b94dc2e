"""Request guards shared by the worker's HTTP routes (``docs/security.md``).

* :func:`bearer_token` and :func:`token_matches`: the ``Authorization: Bearer`` token of a
  request (for websockets also ``?access_token=``, since browsers cannot set headers there),
  compared in constant time with every configured token;
* :func:`client_key`: who a request counts against for the per-client quotas: its verified
  bearer token (hashed), else its remote address;
* :func:`json_depth_exceeds`: a non-recursive depth check for decoded request bodies;
* :func:`harden`: the middlewares of the worker's aiohttp application (``Host`` check, JSON
  error bodies for every error aiohttp produces itself) and the server's read timeouts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import orjson
from aiohttp import web

__all__ = [
    "bearer_token",
    "client_key",
    "harden",
    "host_allowed",
    "json_depth_exceeds",
    "json_error",
    "token_matches",
]

log = logging.getLogger(__name__)

#: Deepest nesting of arrays and objects accepted in a request body or websocket frame.
MAX_JSON_DEPTH: Final = 32

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": True, "statusCode": status, "reason": reason}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def bearer_token(request: web.Request, *, query: bool = False) -> str | None:
    """The token of ``Authorization: Bearer <token>``; with ``query``, else ``?access_token=``
    (RFC 6750 §2.3). None without one."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return ""
    if query:
        return request.query.get("access_token")
    return None


def token_matches(given: str | None, tokens: Collection[str]) -> bool:
    """Whether ``given`` is one of ``tokens``: compared with every one, in constant time each."""
    if given is None:
        return False
    encoded = given.encode()
    matched = False
    for candidate in tokens:
        matched |= hmac.compare_digest(candidate.encode(), encoded)
    return matched


def client_key(request: web.Request, token: str | None) -> str:
    """The quota key of a request: ``token:<hash>`` for a verified token, else ``ip:<addr>``.

    Only verified tokens count (an unchecked header would let a client pick a fresh identity
    per request). Behind a reverse proxy every request has the proxy's address: give each
    client its own token there.
    """
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"ip:{request.remote or 'unknown'}"


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests arrays and objects deeper than ``limit`` (without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _host_name(host: str) -> str:
    """``Host`` header value without its port, lower case, IPv6 brackets removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    name, _, port = host.rpartition(":")
    if name and port.isdigit():
        return name
    return host


def host_allowed(host: str | None, allowed: Collection[str] | None) -> bool:
    """Whether a ``Host`` header passes: any with ``allowed`` None, else its name (without the
    port) must be listed. A missing header only passes with ``allowed`` None."""
    if allowed is None:
        return True
    if not host:
        return False
    name = _host_name(host)
    if name in allowed:
        return True
    try:
        return str(ipaddress.ip_address(name)) in allowed
    except ValueError:
        return False


def harden(
    web_app: web.Application,
    *,
    allowed_hosts: Collection[str] | None,
    runner: Any = None,
    header_timeout: float | None = None,
) -> None:
    """Add the ``Host`` check and the JSON error bodies to ``web_app`` (before it starts), and
    give ``runner`` (faust's :class:`aiohttp.web.AppRunner`) the header timeout.

    aiohttp closes a connection whose request has not fully arrived when its keep-alive timer
    fires; that timer starts when the connection opens and again after each response, so
    ``keepalive_timeout`` bounds both the time to send a request's headers and idle time
    between requests. Bodies are bounded by the API's own read timeout.
    """
    hosts = None if allowed_hosts is None else frozenset(allowed_hosts)

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), hosts):
            # DNS rebinding: a page on another origin resolving its name to this worker.
            return json_error(421, "Host not allowed (set allowed_hosts)")
        return await handler(request)

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _as_json(exc)
        return response

    web_app.middlewares.append(check_host)
    web_app.middlewares.append(json_errors)
    if runner is not None and header_timeout is not None:
        # faust builds its AppRunner without server options; they are read at setup().
        runner._kwargs["keepalive_timeout"] = header_timeout


def _as_json(exc: web.HTTPException) -> web.Response:
    headers = {}
    allow = exc.headers.get("Allow")
    if allow is not None:
        headers["Allow"] = allow
    reason = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        reason = f"Method {exc.method} is not allowed here"
    return json_error(exc.status, reason, headers)
