"""The subscriptions HTTP API (XCM.md §12): ``/subs``, ``/subs/{id}``, ``/openapi.json``, ``/docs``.

The handlers are plain aiohttp handlers on :class:`SubscriptionApi`; two ways to serve them:

* in the worker, ``register_api(app, store=..., live=..., registry=...)`` mounts them on the
  faust app as ``@app.page`` views (faust's web server is aiohttp);
* anywhere else, ``SubscriptionApi(...).add_routes(web_app.router)`` on an aiohttp application.

Every path answers with and without a trailing slash. Every error is an ``application/json``
body ``{"error": true, "statusCode": n, "reason": "...", "details": [...]?}`` (pitfall 18),
including 401, 405, 413, 415, Redis outages (503) and unexpected failures (500).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import RedisError

from ..ingress.registry import NetworkRegistry
from .jsonpatch import PatchError, PatchTestFailed, apply_patch, parse_operations
from .models import Subscription, unknown_networks
from .openapi import ALLOWED_PATCH_PATHS, docs_page, openapi_document
from .store import (
    ConcurrentModification,
    LiveSubscriptions,
    SubscriptionError,
    SubscriptionNotFound,
    SubscriptionStore,
)

__all__ = [
    "ApiError",
    "ApiSettings",
    "Handler",
    "KnownNetworks",
    "Route",
    "SubscriptionApi",
    "register_api",
    "registry_networks",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Returns the URNs of the networks the registry knows (``{prefix}networks``).
KnownNetworks = Callable[[], Awaitable[Collection[str]]]

PATCH_PATHS_ERROR: Final = "Only operations on these paths are allowed: " + ",".join(
    ALLOWED_PATCH_PATHS
)
_PATCH_ATTEMPTS: Final = 10
_JSON_TYPES: Final = frozenset({"application/json", "application/octet-stream"})
_MAX_REASON_ERRORS: Final = 3


class ApiSettings(BaseModel):
    """Access and size rules of the API."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Bearer tokens accepted on POST, PATCH and DELETE; empty: writes are open.
    write_tokens: tuple[str, ...] = Field(default=(), repr=False)
    #: Bearer tokens accepted on GET /subs and /subs/{id} (a write token also works);
    #: None: reads are open. /openapi.json and /docs are always open.
    read_tokens: tuple[str, ...] | None = Field(default=None, repr=False)
    #: Largest request body, in bytes (413 above it).
    max_body_bytes: int = Field(default=1 << 20, ge=1)

    @field_validator("write_tokens", "read_tokens")
    @classmethod
    def _clean_tokens(cls, tokens: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for token in tokens or ():
            if not token or token != token.strip():
                raise ValueError("a bearer token is a non-empty string without outer spaces")
        return tokens


class ApiError(Exception):
    """An error answer: ``status`` and ``reason``, with ``details`` for field errors."""

    def __init__(
        self,
        status: int,
        reason: str,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.details = details
        self.headers = dict(headers or {})


def error_response(
    status: int,
    reason: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": True, "statusCode": status, "reason": reason}
    if details:
        body["details"] = details
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type="application/json")


def _path_text(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_details(
    exc: ValidationError, prefix: Sequence[str | int] = ()
) -> list[dict[str, Any]]:
    """The errors of ``exc`` as ``{path, message, type}`` (never the input: it may hold
    secrets)."""
    details = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        kind = error["type"]
        message = "unknown property" if kind == "extra_forbidden" else error["msg"]
        details.append({"path": [*prefix, *error["loc"]], "message": message, "type": kind})
    return details


def _reason(details: list[dict[str, Any]]) -> str:
    parts = []
    for detail in details[:_MAX_REASON_ERRORS]:
        where = _path_text(detail["path"])
        parts.append(f"{where}: {detail['message']}" if where else detail["message"])
    more = len(details) - _MAX_REASON_ERRORS
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def registry_networks(registry: NetworkRegistry | Callable[[], NetworkRegistry]) -> KnownNetworks:
    """:data:`KnownNetworks` reading the registry (or the registry a getter returns) each time:
    networks an ingress adds later count without a restart."""

    async def known() -> Collection[str]:
        target = registry if isinstance(registry, NetworkRegistry) else registry()
        return set((await target.all()).keys())

    return known


@dataclass(frozen=True)
class Route:
    """One path and the handlers of its methods (upper case)."""

    path: str
    handlers: Mapping[str, Handler] = field(default_factory=dict)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.handlers.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = self.handlers.get("GET")
        if handler is None:
            return self.not_allowed(request.method)
        return await handler(request)

    def not_allowed(self, method: str) -> web.Response:
        allowed = ", ".join(sorted(self.handlers))
        return error_response(
            405, f"Method {method} is not allowed on {self.path}", headers={"Allow": allowed}
        )


def _guard(handler: Handler) -> Handler:
    """Turn every failure of ``handler`` into a JSON error answer."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.reason, exc.details, exc.headers)
        except SubscriptionError as exc:
            return error_response(exc.status, exc.reason)
        except RedisError as exc:
            log.warning("subscriptions API: Redis failed (%s: %s)", type(exc).__name__, exc)
            return error_response(503, "Subscription storage is unavailable; retry later")
        except Exception:
            log.exception("subscriptions API: %s %s failed", request.method, request.path)
            return error_response(500, "Internal server error")

    guarded.__name__ = getattr(handler, "__name__", "handler")
    guarded.__doc__ = handler.__doc__
    return guarded


class SubscriptionApi:
    """The handlers of the subscriptions API.

    ``store`` holds the persistent subscriptions, ``networks`` tells which networks exist;
    ``live``, when given, is refreshed after each change so that this worker notifies with the
    new filters before the answer goes out (other workers follow within about a second).
    """

    def __init__(
        self,
        *,
        store: SubscriptionStore,
        networks: KnownNetworks,
        live: LiveSubscriptions | None = None,
        settings: ApiSettings | None = None,
        version: str = "0.1.0",
    ) -> None:
        self.store = store
        self.networks = networks
        self.live = live
        self.settings = settings or ApiSettings()
        self.version = version
        self._openapi: bytes | None = None
        self._docs: str | None = None

    # --- routing ---

    def routes(self) -> list[Route]:
        """Every route, each path with and without its trailing slash."""
        collection = {
            "GET": _guard(self.list_subscriptions),
            "POST": _guard(self.create_subscriptions),
        }
        one = {
            "GET": _guard(self.get_subscription),
            "PATCH": _guard(self.patch_subscription),
            "DELETE": _guard(self.delete_subscription),
        }
        openapi = {"GET": _guard(self.openapi)}
        docs = {"GET": _guard(self.docs)}
        routes = []
        for path, handlers in (
            ("/subs", collection),
            ("/subs/{id}", one),
            ("/openapi.json", openapi),
            ("/docs", docs),
        ):
            routes.append(Route(path, handlers))
            routes.append(Route(path + "/", handlers))
        return routes

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Mount the API on an aiohttp router."""
        for route in self.routes():
            router.add_route("*", route.path, route.dispatch)

    # --- request helpers ---

    def _authorize(self, request: web.Request, *, write: bool) -> None:
        settings = self.settings
        tokens: Collection[str]
        if write:
            tokens = settings.write_tokens
        elif settings.read_tokens is not None:
            tokens = (*settings.read_tokens, *settings.write_tokens)
        else:
            tokens = ()
        if not tokens:
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="ocstream"'}
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(
                401, "Missing bearer token (Authorization: Bearer <token>)", None, challenge
            )
        scheme, _, token = header.strip().partition(" ")
        given = token.strip().encode()
        matched = False
        for candidate in tokens:
            # Compare with every token, in constant time each: no early exit to time.
            matched |= hmac.compare_digest(candidate.encode(), given)
        if scheme.lower() != "bearer" or not matched:
            raise ApiError(401, "Invalid bearer token", None, challenge)

    async def _read_json(self, request: web.Request, *, patch: bool = False) -> Any:
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            mime = content_type.split(";", 1)[0].strip().lower()
            # No form or text types: a browser may send those cross-site without asking
            # (CORS "simple requests"); octet-stream is what clients send for raw bytes.
            if mime not in _JSON_TYPES and not mime.endswith("+json"):
                expected = (
                    "application/json-patch+json or application/json"
                    if patch
                    else ("application/json")
                )
                raise ApiError(415, f"Unsupported content type {mime!r}: expected {expected}")
        limit = self.settings.max_body_bytes
        too_large = f"Request body is larger than {limit} bytes"
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(413, too_large)
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                raise ApiError(413, too_large)
        if not body.strip():
            raise ApiError(400, "Request body is empty: expected JSON")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"Request body is not valid JSON: {exc}") from None

    async def _check_networks(
        self, subscriptions: Sequence[Subscription], indexes: Sequence[int | None]
    ) -> None:
        known = await self.networks()
        details: list[dict[str, Any]] = []
        for subscription, index in zip(subscriptions, indexes, strict=True):
            prefix: list[str | int] = [] if index is None else [index]
            for urn in unknown_networks(subscription, known):
                where = "origin" if urn == subscription.origin else "destinations"
                details.append(
                    {
                        "path": [*prefix, where],
                        "message": f"Invalid chain id:{urn}",
                        "type": "chain_id",
                    }
                )
        if details:
            reason = details[0]["message"] if len(details) == 1 else _reason(details)
            raise ApiError(400, reason, details)

    async def _changed(self) -> None:
        if self.live is None:
            return
        try:
            await self.live.refresh()
        except Exception as exc:  # the live view's own loop retries
            log.warning("subscriptions: refresh after a change failed (%s)", exc)
            self.live.notify()

    # --- handlers ---

    async def list_subscriptions(self, request: web.Request) -> web.StreamResponse:
        """``GET /subs``: every persistent subscription."""
        self._authorize(request, write=False)
        return json_response([subscription.to_json() for subscription in await self.store.list()])

    async def create_subscriptions(self, request: web.Request) -> web.StreamResponse:
        """``POST /subs``: one subscription or an array, all or nothing; 201."""
        self._authorize(request, write=True)
        body = await self._read_json(request)
        if isinstance(body, dict):
            items: list[Any] = [body]
            indexes: list[int | None] = [None]
        elif isinstance(body, list):
            if not body:
                raise ApiError(400, "At least 1 subscription is required")
            items, indexes = body, list(range(len(body)))
        else:
            raise ApiError(400, "Request body must be a subscription object or an array of them")
        subscriptions: list[Subscription] = []
        details: list[dict[str, Any]] = []
        for item, index in zip(items, indexes, strict=True):
            prefix: list[str | int] = [] if index is None else [index]
            if not isinstance(item, dict):
                details.append(
                    {
                        "path": prefix,
                        "message": "a subscription is a JSON object",
                        "type": "model_type",
                    }
                )
                continue
            try:
                subscription = Subscription.model_validate(item)
            except ValidationError as exc:
                details += validation_details(exc, prefix)
                continue
            if subscription.is_ephemeral:
                details.append(
                    {
                        "path": [*prefix, "ephemeral"],
                        "message": "ephemeral subscriptions are created over the websocket "
                        "API (/ws/subs), not stored",
                        "type": "ephemeral",
                    }
                )
                continue
            subscriptions.append(subscription)
        if details:
            raise ApiError(400, _reason(details), details)
        await self._check_networks(subscriptions, indexes)
        await self.store.create_many(subscriptions)
        await self._changed()
        return web.Response(status=201)

    async def get_subscription(self, request: web.Request) -> web.StreamResponse:
        """``GET /subs/{id}``: the subscription as created; 404."""
        self._authorize(request, write=False)
        subscription_id = request.match_info["id"]
        raw = await self.store.get_raw(subscription_id)
        if raw is None:
            raise SubscriptionNotFound(subscription_id)
        return web.Response(body=raw, content_type="application/json")

    async def patch_subscription(self, request: web.Request) -> web.StreamResponse:
        """``PATCH /subs/{id}``: an RFC 6902 patch on /senders, /destinations, /channels or
        /events, validated like a new subscription; 200 with the result."""
        self._authorize(request, write=True)
        subscription_id = request.match_info["id"]
        document = await self._read_json(request, patch=True)
        try:
            operations = parse_operations(
                document, allowed_roots=ALLOWED_PATCH_PATHS, roots_error=PATCH_PATHS_ERROR
            )
        except PatchError as exc:
            raise ApiError(400, str(exc)) from None
        for _ in range(_PATCH_ATTEMPTS):
            raw = await self.store.get_raw(subscription_id)
            if raw is None:
                raise SubscriptionNotFound(subscription_id)
            try:
                patched = apply_patch(orjson.loads(raw), operations)
            except PatchTestFailed as exc:
                raise ApiError(409, f"JSON Patch test failed: {exc}") from None
            except PatchError as exc:
                raise ApiError(400, f"JSON Patch cannot be applied: {exc}") from None
            try:
                subscription = Subscription.model_validate(patched)
            except ValidationError as exc:
                details = validation_details(exc)
                raise ApiError(400, _reason(details), details) from None
            await self._check_networks([subscription], [None])
            try:
                await self.store.replace(subscription, expected=raw)
            except ConcurrentModification:
                continue  # another PATCH won the race: apply ours to its result
            await self._changed()
            return json_response(subscription.to_json())
        raise ConcurrentModification(subscription_id)

    async def delete_subscription(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /subs/{id}``: 200, also for an unknown id."""
        self._authorize(request, write=True)
        if await self.store.delete(request.match_info["id"]):
            await self._changed()
        return web.Response(status=200)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """``GET /openapi.json``."""
        if self._openapi is None:
            self._openapi = orjson.dumps(self.openapi_document())
        return web.Response(body=self._openapi, content_type="application/json")

    async def docs(self, request: web.Request) -> web.StreamResponse:
        """``GET /docs``: the OpenAPI document as a page that needs no network."""
        if self._docs is None:
            self._docs = docs_page(self.openapi_document())
        return web.Response(
            text=self._docs,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'",
            },
        )

    def openapi_document(self) -> dict[str, Any]:
        settings = self.settings
        return openapi_document(
            version=self.version,
            secured_writes=bool(settings.write_tokens),
            secured_reads=settings.read_tokens is not None,
        )


def register_api(
    app: Any,
    *,
    store: SubscriptionStore,
    registry: NetworkRegistry | Callable[[], NetworkRegistry],
    live: LiveSubscriptions | None = None,
    settings: ApiSettings | None = None,
    start_live: bool = True,
) -> SubscriptionApi:
    """Mount the subscriptions API on the faust ``app`` (as ``@app.page`` views).

    ``registry`` (or a function returning it, called per request) tells which networks exist.
    With ``live`` and ``start_live``, the web server's startup starts ``live`` and its cleanup
    stops it (``live.start()`` is idempotent, so starting it elsewhere too is harmless).
    """
    from faust.web import View

    from .. import __version__

    api = SubscriptionApi(
        store=store,
        networks=registry_networks(registry),
        live=live,
        settings=settings,
        version=__version__,
    )
    for index, route in enumerate(api.routes()):
        app.page(route.path, name=f"ocstream-subscriptions-{index}")(_faust_view(View, route))
    if live is not None and start_live:
        web_app: web.Application = app.web.web_app

        async def start(_: web.Application) -> None:
            await live.start()

        async def stop(_: web.Application) -> None:
            await live.stop()

        web_app.on_startup.append(start)
        web_app.on_cleanup.append(stop)
    return api


def _faust_view(base: Any, route: Route) -> Any:
    """A faust View class answering every method of ``route`` (405 JSON for the others)."""

    def method(name: str) -> Callable[..., Awaitable[web.StreamResponse]]:
        async def call(self: Any, request: web.Request, **_: Any) -> web.StreamResponse:
            handler = route.handlers.get(name)
            if handler is None:
                return route.not_allowed(name)
            return await handler(request)

        return call

    methods = {name.lower(): method(name) for name in ("GET", "POST", "PUT", "PATCH", "DELETE")}
    return type(
        "SubscriptionsView",
        (base,),
        {
            **methods,
            "__doc__": f"{route.path} (subscriptions API)",
            # The methods that answer something else than 405 (`ocstream topology` lists them).
            "allowed_methods": tuple(route.handlers),
        },
    )
